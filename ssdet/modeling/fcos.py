"""FCOS from a YAML config.

Detectron2 ships FCOS (``detectron2.modeling.meta_arch.fcos``) for LazyConfig only: the class is
neither registered nor ``@configurable``, so ``MODEL.META_ARCHITECTURE "FCOS"`` cannot build it.
:class:`SsdetFCOS` is that class, unchanged, plus a ``from_config`` that reads the same keys as
Detectron2's RetinaNet (``MODEL.RETINANET``, see ``SSDET.FCOS`` in ssdet/config.py). Everything
ssdet does with a ``DenseDetector`` (the student's one forward with a foreground-count normalizer
per part, pseudo-labeling, evaluation) works with it as with RetinaNet.
"""

from __future__ import annotations

import inspect
from typing import Any

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

from ssdet.utils.errors import InputError

__all__ = ["FCOS_DEFAULTS", "SsdetFCOS"]

# Detectron2's FCOS defaults for the SSDET.FCOS keys (ssdet/config.py), read off FCOS's own
# signature so that they follow the installed Detectron2 instead of a copy of its literals.
_FCOS_ARGS = inspect.signature(FCOS.__init__).parameters
FCOS_DEFAULTS = {
    "CENTER_SAMPLING_RADIUS": _FCOS_ARGS["center_sampling_radius"].default,
    "NMS_THRESH_TEST": _FCOS_ARGS["test_nms_thresh"].default,
}


@META_ARCH_REGISTRY.register()
class SsdetFCOS(FCOS):
    """Detectron2's FCOS, built from ``cfg`` (see the module docstring).

    Args:
        kwargs: :class:`detectron2.modeling.meta_arch.fcos.FCOS`'s arguments.
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        retinanet = cfg.MODEL.RETINANET
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [name for name in retinanet.IN_FEATURES if name not in shapes]
        if missing:
            raise InputError(
                f"MODEL.RETINANET.IN_FEATURES names {missing}, which the backbone "
                f"({cfg.MODEL.BACKBONE.NAME}) does not output; it outputs {sorted(shapes)}."
            )
        feature_shapes = [shapes[name] for name in retinanet.IN_FEATURES]
        # A config without SSDET (config_detectron2.yaml, for stock Detectron2 plus this module)
        # gets Detectron2's FCOS defaults; the stock config notes a run's other values.
        fcos = cfg.SSDET.FCOS if "SSDET" in cfg else CfgNode(FCOS_DEFAULTS)
        head = FCOSHead(
            input_shape=feature_shapes,
            conv_dims=[feature_shapes[0].channels] * retinanet.NUM_CONVS,
            num_classes=retinanet.NUM_CLASSES,
            prior_prob=retinanet.PRIOR_PROB,
            norm=retinanet.NORM,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(retinanet.IN_FEATURES),
            "num_classes": retinanet.NUM_CLASSES,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": retinanet.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": retinanet.FOCAL_LOSS_GAMMA,
            "test_score_thresh": retinanet.SCORE_THRESH_TEST,
            "test_topk_candidates": retinanet.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": fcos.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }
