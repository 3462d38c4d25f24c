"""AutoAugment for detection (Zoph et al. 2019), the learned policies v0..v3.

The policies, the magnitude-to-argument mapping (the authors' ``level_to_arg``) and the constants
follow tensorflow/tpu ``models/official/detection/utils/autoaugment_utils.py``. Policy "v0" is the
one of the paper and the one Augment-S2/S3 use. A policy is a list of sub-policies; each image gets
one sub-policy drawn uniformly, whose ops run in order, each with its own probability.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from detectron2.data import transforms as T

from ssdet.data.augment import functional as F
from ssdet.data.augment.ops import (
    FILL_VALUE,
    BBoxCutout,
    BoxesOnly,
    ColorOp,
    Cutout,
    Rotate,
    Shear,
    Translate,
)

__all__ = [
    "AUTOAUGMENT_POLICIES",
    "BOX_ONLY_OPS",
    "MAX_LEVEL",
    "AutoAugment",
    "MagnitudeConstants",
    "build_op",
    "check_image_format",
    "needs_boxes",
]

# Magnitude levels run from 0 to MAX_LEVEL (the controller's largest prediction).
MAX_LEVEL = 10.0

# (op name, probability, magnitude level) per op; the ops of a sub-policy run in order.
SubPolicy = tuple[tuple[str, float, int], ...]

AUTOAUGMENT_POLICIES: dict[str, tuple[SubPolicy, ...]] = {
    # The policy of the AutoAugment-detection paper, used by Augment-S2 and S3.
    "v0": (
        (("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)),
        (("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)),
        (("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)),
        (("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)),
        (("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)),
    ),
    "v1": (
        (("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)),
        (("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)),
        (("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)),
        (("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)),
        (("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)),
        (("Color", 0.0, 0), ("ShearX_Only_BBoxes", 0.8, 4)),
        (("ShearY_Only_BBoxes", 0.8, 2), ("Flip_Only_BBoxes", 0.0, 10)),
        (("Equalize", 0.6, 10), ("TranslateX_BBox", 0.2, 2)),
        (("Color", 1.0, 10), ("TranslateY_Only_BBoxes", 0.4, 6)),
        (("Rotate_BBox", 0.8, 10), ("Contrast", 0.0, 10)),
        (("Cutout", 0.2, 2), ("Brightness", 0.8, 10)),
        (("Color", 1.0, 6), ("Equalize", 1.0, 2)),
        (("Cutout_Only_BBoxes", 0.4, 6), ("TranslateY_Only_BBoxes", 0.8, 2)),
        (("Color", 0.2, 8), ("Rotate_BBox", 0.8, 10)),
        (("Sharpness", 0.4, 4), ("TranslateY_Only_BBoxes", 0.0, 4)),
        (("Sharpness", 1.0, 4), ("SolarizeAdd", 0.4, 4)),
        (("Rotate_BBox", 1.0, 8), ("Sharpness", 0.2, 8)),
        (("ShearY_BBox", 0.6, 10), ("Equalize_Only_BBoxes", 0.6, 8)),
        (("ShearX_BBox", 0.2, 6), ("TranslateY_Only_BBoxes", 0.2, 10)),
        (("SolarizeAdd", 0.6, 8), ("Brightness", 0.8, 10)),
    ),
    "v2": (
        (("Color", 0.0, 6), ("Cutout", 0.6, 8), ("Sharpness", 0.4, 8)),
        (("Rotate_BBox", 0.4, 8), ("Sharpness", 0.4, 2), ("Rotate_BBox", 0.8, 10)),
        (("TranslateY_BBox", 1.0, 8), ("AutoContrast", 0.8, 2)),
        (("AutoContrast", 0.4, 6), ("ShearX_BBox", 0.8, 8), ("Brightness", 0.0, 10)),
        (("SolarizeAdd", 0.2, 6), ("Contrast", 0.0, 10), ("AutoContrast", 0.6, 0)),
        (("Cutout", 0.2, 0), ("Solarize", 0.8, 8), ("Color", 1.0, 4)),
        (("TranslateY_BBox", 0.0, 4), ("Equalize", 0.6, 8), ("Solarize", 0.0, 10)),
        (("TranslateY_BBox", 0.2, 2), ("ShearY_BBox", 0.8, 8), ("Rotate_BBox", 0.8, 8)),
        (("Cutout", 0.8, 8), ("Brightness", 0.8, 8), ("Cutout", 0.2, 2)),
        (("Color", 0.8, 4), ("TranslateY_BBox", 1.0, 6), ("Rotate_BBox", 0.6, 6)),
        (("Rotate_BBox", 0.6, 10), ("BBox_Cutout", 1.0, 4), ("Cutout", 0.2, 8)),
        (("Rotate_BBox", 0.0, 0), ("Equalize", 0.6, 6), ("ShearY_BBox", 0.6, 8)),
        (("Brightness", 0.8, 8), ("AutoContrast", 0.4, 2), ("Brightness", 0.2, 2)),
        (("TranslateY_BBox", 0.4, 8), ("Solarize", 0.4, 6), ("SolarizeAdd", 0.2, 10)),
        (("Contrast", 1.0, 10), ("SolarizeAdd", 0.2, 8), ("Equalize", 0.2, 4)),
    ),
    "v3": (
        (("Posterize", 0.8, 2), ("TranslateX_BBox", 1.0, 8)),
        (("BBox_Cutout", 0.2, 10), ("Sharpness", 1.0, 8)),
        (("Rotate_BBox", 0.6, 8), ("Rotate_BBox", 0.8, 10)),
        (("Equalize", 0.8, 10), ("AutoContrast", 0.2, 10)),
        (("SolarizeAdd", 0.2, 2), ("TranslateY_BBox", 0.2, 8)),
        (("Sharpness", 0.0, 2), ("Color", 0.4, 8)),
        (("Equalize", 1.0, 8), ("TranslateY_BBox", 1.0, 8)),
        (("Posterize", 0.6, 2), ("Rotate_BBox", 0.0, 10)),
        (("AutoContrast", 0.6, 0), ("Rotate_BBox", 1.0, 6)),
        (("Equalize", 0.0, 4), ("Cutout", 0.8, 10)),
        (("Brightness", 1.0, 2), ("TranslateY_BBox", 1.0, 6)),
        (("Contrast", 0.0, 2), ("ShearY_BBox", 0.8, 0)),
        (("AutoContrast", 0.8, 10), ("Contrast", 0.2, 10)),
        (("Rotate_BBox", 1.0, 10), ("Cutout", 1.0, 10)),
        (("SolarizeAdd", 0.8, 6), ("Equalize", 0.8, 8)),
    ),
}

# Ops applied to the pixels inside each box, each box independently with a third of the op's
# probability (the authors' `_scale_bbox_only_op_probability`).
BOX_ONLY_OPS = frozenset(
    {
        "Rotate_Only_BBoxes",
        "ShearX_Only_BBoxes",
        "ShearY_Only_BBoxes",
        "TranslateX_Only_BBoxes",
        "TranslateY_Only_BBoxes",
        "Flip_Only_BBoxes",
        "Solarize_Only_BBoxes",
        "Equalize_Only_BBoxes",
        "Cutout_Only_BBoxes",
    }
)
_BOX_ONLY_PROB_DIVISOR = 3.0

# Image formats whose gray conversion the color ops know (Detectron2's INPUT.FORMAT values).
_IMAGE_FORMATS = ("BGR", "RGB", "L")


@dataclasses.dataclass(frozen=True)
class MagnitudeConstants:
    """Op arguments at the top level (MAX_LEVEL); the authors' ``augmentation_hparams``.

    Pixel constants are absolute, sized for COCO images (about 640 x 480) on which the authors
    apply AutoAugment before scale jitter; :meth:`scaled` adapts them to other image sizes.
    """

    # Half side (pixels) of the Cutout square.
    cutout_const: float = 100
    # Shift (pixels) of TranslateX/Y_BBox.
    translate_const: float = 250
    # Half side (pixels) of the Cutout_Only_BBoxes square.
    cutout_bbox_const: float = 50
    # Shift (pixels) of TranslateX/Y_Only_BBoxes.
    translate_bbox_const: float = 120
    # BBox_Cutout hole size as a fraction of the box size.
    cutout_max_pad_fraction: float = 0.75

    def scaled(self, pixel_scale: float) -> "MagnitudeConstants":
        """Copy with every pixel constant multiplied by ``pixel_scale``."""
        return dataclasses.replace(
            self,
            cutout_const=self.cutout_const * pixel_scale,
            translate_const=self.translate_const * pixel_scale,
            cutout_bbox_const=self.cutout_bbox_const * pixel_scale,
            translate_bbox_const=self.translate_bbox_const * pixel_scale,
        )


def _op_builders(
    fill: int, image_format: str, constants: MagnitudeConstants
) -> dict[str, Callable[[float], T.Augmentation]]:
    """Map each op name to ``level -> Augmentation`` (the authors' ``level_to_arg``).

    Box-only ops map to the op applied inside one box; :func:`build_op` wraps them.
    """

    def fraction(level: float) -> float:
        return level / MAX_LEVEL

    def enhance(level: float) -> float:
        return fraction(level) * 1.8 + 0.1

    def pixels(level: float, const: float) -> int:
        # The authors shift boxes by whole pixels; rounding the image shift the same way keeps
        # image and boxes exactly aligned.
        return int(fraction(level) * const)

    k = constants
    return {
        "AutoContrast": lambda level: ColorOp(F.autocontrast),
        "Equalize": lambda level: ColorOp(F.equalize),
        "Posterize": lambda level: ColorOp(F.posterize, {"bits": int(fraction(level) * 4)}),
        "Solarize": lambda level: ColorOp(F.solarize, {"threshold": int(fraction(level) * 256)}),
        "SolarizeAdd": lambda level: ColorOp(
            F.solarize_add, {"addition": int(fraction(level) * 110)}
        ),
        "Color": lambda level: ColorOp(
            F.color, {"factor": enhance(level), "image_format": image_format}
        ),
        "Contrast": lambda level: ColorOp(
            F.contrast, {"factor": enhance(level), "image_format": image_format}
        ),
        "Brightness": lambda level: ColorOp(F.brightness, {"factor": enhance(level)}),
        "Sharpness": lambda level: ColorOp(F.sharpness, {"factor": enhance(level)}),
        "Cutout": lambda level: Cutout(int(fraction(level) * k.cutout_const), fill),
        "BBox_Cutout": lambda level: BBoxCutout(fraction(level) * k.cutout_max_pad_fraction, fill),
        "Rotate_BBox": lambda level: Rotate(fraction(level) * 30.0, fill),
        "ShearX_BBox": lambda level: Shear(fraction(level) * 0.3, True, fill),
        "ShearY_BBox": lambda level: Shear(fraction(level) * 0.3, False, fill),
        "TranslateX_BBox": lambda level: Translate(pixels(level, k.translate_const), True, fill),
        "TranslateY_BBox": lambda level: Translate(pixels(level, k.translate_const), False, fill),
        "Rotate_Only_BBoxes": lambda level: Rotate(fraction(level) * 30.0, fill),
        "ShearX_Only_BBoxes": lambda level: Shear(fraction(level) * 0.3, True, fill),
        "ShearY_Only_BBoxes": lambda level: Shear(fraction(level) * 0.3, False, fill),
        "TranslateX_Only_BBoxes": lambda level: Translate(
            pixels(level, k.translate_bbox_const), True, fill
        ),
        "TranslateY_Only_BBoxes": lambda level: Translate(
            pixels(level, k.translate_bbox_const), False, fill
        ),
        "Flip_Only_BBoxes": lambda level: T.RandomFlip(prob=1.0),
        "Solarize_Only_BBoxes": lambda level: ColorOp(
            F.solarize, {"threshold": int(fraction(level) * 256)}
        ),
        "Equalize_Only_BBoxes": lambda level: ColorOp(F.equalize),
        "Cutout_Only_BBoxes": lambda level: Cutout(
            int(fraction(level) * k.cutout_bbox_const), fill
        ),
    }


def build_op(
    name: str,
    prob: float,
    level: float,
    *,
    fill: int = FILL_VALUE,
    image_format: str = "BGR",
    constants: MagnitudeConstants = MagnitudeConstants(),
) -> tuple[T.Augmentation, float]:
    """Build one op of a policy.

    Args:
        name: the authors' op name, e.g. "TranslateX_BBox" or "Equalize_Only_BBoxes".
        prob: the op's probability in its sub-policy.
        level: magnitude level in [0, MAX_LEVEL] (larger values extrapolate).
        fill: pixel value where an op leaves pixels undefined.
        image_format: channel order of the images ("BGR", "RGB" or "L"), for the gray level of
            Color and Contrast.
        constants: op arguments at the top level.

    Returns:
        (augmentation, probability of running it). Box-only ops come back wrapped in
        :class:`BoxesOnly` with per-box probability ``prob / 3`` and are always run.
    """
    builders = _op_builders(fill, image_format, constants)
    if name not in builders:
        raise ValueError(f"Unknown AutoAugment op {name!r}; valid ops: {sorted(builders)}")
    augmentation = builders[name](level)
    if name in BOX_ONLY_OPS:
        return BoxesOnly(augmentation, prob / _BOX_ONLY_PROB_DIVISOR), 1.0
    return augmentation, prob


def needs_boxes(augmentation: T.Augmentation) -> bool:
    """Whether an op reads the instance boxes to choose where it acts."""
    return isinstance(augmentation, (BoxesOnly, BBoxCutout))


def check_image_format(image_format: str) -> None:
    """Raise ValueError unless the color ops know the gray level of ``image_format``."""
    if image_format not in _IMAGE_FORMATS:
        raise ValueError(
            f"AutoAugment color ops support image formats {_IMAGE_FORMATS}, got {image_format!r}"
        )


class AutoAugment(T.Augmentation):
    """A learned AutoAugment detection policy: one uniformly drawn sub-policy per image.

    The ops of the drawn sub-policy run in order, each with its probability, on the image and
    boxes as the previous ops left them. Box-only ops and BBox_Cutout read the boxes: the
    ``AugInput`` must carry them (:class:`~ssdet.data.augment.PolicyDatasetMapper` does).
    """

    def __init__(
        self,
        version: str = "v0",
        fill: int = FILL_VALUE,
        image_format: str = "BGR",
        pixel_scale: float = 1.0,
    ):
        """
        Args:
            version: "v0" (the paper's), "v1", "v2" or "v3".
            fill: pixel value where an op leaves pixels undefined.
            image_format: channel order of the images, "BGR", "RGB" or "L".
            pixel_scale: multiplies the pixel constants of :class:`MagnitudeConstants`; 1.0 is the
                authors' (COCO-size images).
        """
        super().__init__()
        if version not in AUTOAUGMENT_POLICIES:
            raise ValueError(
                f"Unknown AutoAugment policy {version!r}; valid: {sorted(AUTOAUGMENT_POLICIES)}"
            )
        check_image_format(image_format)
        self._init(locals())
        constants = MagnitudeConstants().scaled(pixel_scale)
        self.sub_policies = [
            [
                build_op(
                    name, prob, level, fill=fill, image_format=image_format, constants=constants
                )
                for name, prob, level in sub_policy
            ]
            for sub_policy in AUTOAUGMENT_POLICIES[version]
        ]
        self._needs_boxes = any(
            needs_boxes(op) for sub_policy in self.sub_policies for op, _ in sub_policy
        )
        # What the last call drew, for tools that show it (tools/visualize_augment.py): the
        # sub-policy's index and its ops as (name, probability, level, ran); None before a call.
        self.last_draw: tuple[int, tuple[tuple[str, float, float, bool], ...]] | None = None

    def get_transform(self, image: np.ndarray, boxes: np.ndarray | None) -> T.Transform:
        return self(T.AugInput(image, boxes=boxes))

    def __call__(self, aug_input: T.AugInput) -> T.Transform:
        # Fail on every image, not only on the ones that draw a box-only sub-policy.
        if self._needs_boxes and aug_input.boxes is None:
            raise ValueError(
                f"AutoAugment policy {self.version!r} has ops that act inside the instance boxes, "
                "but the AugInput has no boxes. Detectron2's DatasetMapper builds AugInput without "
                "boxes; use ssdet.data.augment.PolicyDatasetMapper."
            )
        index = np.random.randint(len(self.sub_policies))
        transforms, ran = [], []
        for op, prob in self.sub_policies[index]:
            ran.append(bool(np.random.uniform() < prob))
            if ran[-1]:
                transforms.append(op(aug_input))
        self.last_draw = (
            index,
            tuple(
                (name, prob, level, run)
                for (name, prob, level), run in zip(
                    AUTOAUGMENT_POLICIES[self.version][index], ran, strict=True
                )
            ),
        )
        return T.TransformList(transforms)
