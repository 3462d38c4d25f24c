"""RandAugment for detection (Augment-S4): N ops drawn uniformly, all at one magnitude M."""

import numpy as np
from detectron2.data import transforms as T

from ssdet.data.augment.autoaugment import (
    BOX_ONLY_OPS,
    MagnitudeConstants,
    build_op,
    check_image_format,
    needs_boxes,
)
from ssdet.data.augment.ops import FILL_VALUE

__all__ = ["RANDAUGMENT_OPS", "RandAugment"]

# The op set of the authors' detection RandAugment (tensorflow/tpu detection
# `autoaugment_utils.distort_image_with_randaugment`), which uses AutoAugment's magnitude mapping
# and constants. It has no box-only op, so Detectron2's own DatasetMapper can run S4.
RANDAUGMENT_OPS = (
    "Equalize",
    "Solarize",
    "Color",
    "Cutout",
    "SolarizeAdd",
    "TranslateX_BBox",
    "TranslateY_BBox",
    "ShearX_BBox",
    "ShearY_BBox",
    "Rotate_BBox",
)


class RandAugment(T.Augmentation):
    """Apply ``num_ops`` ops drawn uniformly (with replacement) from ``ops``, all at ``magnitude``.

    As in the authors' code, a drawn op always runs (there is no per-op probability) and the signs
    of rotate / shear / translate are drawn 50/50 each time.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 10,
        ops: tuple[str, ...] = RANDAUGMENT_OPS,
        fill: int = FILL_VALUE,
        image_format: str = "BGR",
        pixel_scale: float = 1.0,
    ):
        """
        Args:
            num_ops: number of ops applied in sequence to each image (N).
            magnitude: magnitude level of every op (M), on the AutoAugment scale where 10 is the
                top level; larger values extrapolate.
            ops: AutoAugment op names to draw from; box-only ops are not supported.
            fill: pixel value where an op leaves pixels undefined.
            image_format: channel order of the images, "BGR", "RGB" or "L".
            pixel_scale: multiplies the pixel constants of ``MagnitudeConstants``.
        """
        super().__init__()
        self._init(locals())
        if set(ops) & BOX_ONLY_OPS:
            raise ValueError(
                "RandAugment draws whole-image ops; box-only ops given: "
                f"{sorted(set(ops) & BOX_ONLY_OPS)}"
            )
        if num_ops < 0 or not ops:
            raise ValueError(f"RandAugment needs num_ops >= 0 and ops, got {num_ops}, {ops}")
        check_image_format(image_format)
        constants = MagnitudeConstants().scaled(pixel_scale)
        self._ops = [
            build_op(
                name, 1.0, magnitude, fill=fill, image_format=image_format, constants=constants
            )[0]
            for name in ops
        ]
        self._needs_boxes = any(needs_boxes(op) for op in self._ops)
        # The op names the last call drew, in order, for tools that show them
        # (tools/visualize_augment.py); None before a call.
        self.last_draw: tuple[str, ...] | None = None

    def get_transform(self, image: np.ndarray, boxes: np.ndarray | None) -> T.Transform:
        return self(T.AugInput(image, boxes=boxes))

    def __call__(self, aug_input: T.AugInput) -> T.Transform:
        # Fail on every image, not only on the ones that draw a box-reading op.
        if self._needs_boxes and aug_input.boxes is None:
            raise ValueError(
                "RandAugment has ops that read the instance boxes, but the AugInput has none; "
                "use ssdet.data.augment.PolicyDatasetMapper."
            )
        transforms, drawn = [], []
        for _ in range(self.num_ops):
            index = np.random.randint(len(self._ops))
            drawn.append(self.ops[index])
            transforms.append(self._ops[index](aug_input))
        self.last_draw = tuple(drawn)
        return T.TransformList(transforms)
