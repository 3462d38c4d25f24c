"""Augmentation policies Augment-S1..S4 of "Rethinking Pre-training and Self-training".

Build a policy with :func:`build_augmentation_policy` (from a config) or :func:`build_policy`
(from arguments) and map dataset dicts with :class:`PolicyDatasetMapper`, which hands the boxes to
the augmentations (AutoAugment's box-only ops need them).
"""

from ssdet.data.augment.autoaugment import AUTOAUGMENT_POLICIES, AutoAugment, MagnitudeConstants
from ssdet.data.augment.mapper import PolicyDatasetMapper
from ssdet.data.augment.ops import (
    BBoxCutout,
    BoxesOnly,
    ColorOp,
    Cutout,
    Rotate,
    ScaleJitterCrop,
    Shear,
    Translate,
)
from ssdet.data.augment.policies import (
    DEFAULT_SCALE_RANGES,
    POLICY_NAMES,
    build_augmentation_policy,
    build_policy,
)
from ssdet.data.augment.randaugment import RANDAUGMENT_OPS, RandAugment

__all__ = [
    "AUTOAUGMENT_POLICIES",
    "DEFAULT_SCALE_RANGES",
    "POLICY_NAMES",
    "RANDAUGMENT_OPS",
    "AutoAugment",
    "BBoxCutout",
    "BoxesOnly",
    "ColorOp",
    "Cutout",
    "MagnitudeConstants",
    "PolicyDatasetMapper",
    "RandAugment",
    "Rotate",
    "ScaleJitterCrop",
    "Shear",
    "Translate",
    "build_augmentation_policy",
    "build_policy",
]
