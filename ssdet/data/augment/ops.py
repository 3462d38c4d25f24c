"""Detectron2 Transforms and Augmentations of the detection AutoAugment op set and scale jitter.

Every op is an :class:`~detectron2.data.transforms.Augmentation` whose ``get_transform`` draws its
random choices from ``np.random`` (so ``np.random.seed`` makes it reproducible) and returns a
deterministic :class:`~detectron2.data.transforms.Transform`; image and boxes then move together
through ``AugInput`` and Detectron2's ``transform_instance_annotations``.

Box semantics, shared by every geometric transform here:

* boxes are XYXY in Detectron2's continuous coordinates (pixel (i, j) covers [j, j+1] x [i, i+1]);
* a rotated or sheared box is re-fit as the axis-aligned box of its four transformed corners
  (Detectron2's ``Transform.apply_box`` default, and what the authors' TensorFlow code does with
  corner points), so it encloses the transformed object box but may be looser than the object;
* after each geometric transform (crops included) boxes are clipped to the output image, and a
  box left thinner than ``MIN_BOX_SIZE`` pixels is collapsed to zero area, which Detectron2's
  ``filter_empty_instances`` (run by ``DatasetMapper``) then drops together with its class.

Being looser than the object, a rotated or sheared box can outlive it: when a later crop keeps a
corner of the fit but none of the object, the box stays (as in the authors' code).
"""

import functools
from collections.abc import Callable

import cv2
import numpy as np
from detectron2.data import transforms as T

from ssdet.data.augment import functional as F

__all__ = [
    "FILL_VALUE",
    "MIN_BOX_SIZE",
    "AffineTransform",
    "BBoxCutout",
    "BoxContentTransform",
    "BoxesOnly",
    "ClipCropTransform",
    "ColorOp",
    "Cutout",
    "CutoutTransform",
    "FastResizeTransform",
    "Rotate",
    "ScaleJitterCrop",
    "Shear",
    "Translate",
    "clip_boxes",
    "rotation_matrix",
    "shear_matrix",
    "translation_matrix",
]

# Gray level the authors write where an op leaves pixels undefined (their `replace` value).
FILL_VALUE = 128
# Boxes thinner than this (pixels) after a geometric transform are dropped.
MIN_BOX_SIZE = 1.0


def clip_boxes(
    boxes: np.ndarray, height: int, width: int, min_size: float = MIN_BOX_SIZE
) -> np.ndarray:
    """Clip XYXY boxes to an image and collapse the ones thinner than ``min_size`` to zero area.

    Args:
        boxes: (N, 4) XYXY boxes in absolute coordinates; modified in place.
        height, width: the image size the boxes must lie in.
        min_size: boxes whose clipped width or height is below this many pixels get x1 = x0 and
            y1 = y0, so that ``detection_utils.filter_empty_instances`` removes them.

    Returns:
        The (N, 4) clipped boxes.
    """
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    too_small = (boxes[:, 2] - boxes[:, 0] < min_size) | (boxes[:, 3] - boxes[:, 1] < min_size)
    boxes[too_small, 2:] = boxes[too_small, :2]
    return boxes


def rotation_matrix(degrees: float, height: int, width: int) -> np.ndarray:
    """(2, 3) forward map rotating the image plane about its centre, counterclockwise on screen."""
    return cv2.getRotationMatrix2D((width / 2.0, height / 2.0), degrees, 1.0)


def shear_matrix(factor: float, horizontal: bool) -> np.ndarray:
    """(2, 3) forward map of the authors' shear about the top-left corner.

    Horizontal: ``x' = x - factor * y``; vertical: ``y' = y - factor * x``.
    """
    matrix = np.eye(2, 3)
    if horizontal:
        matrix[0, 1] = -factor
    else:
        matrix[1, 0] = -factor
    return matrix


def translation_matrix(pixels: float, horizontal: bool) -> np.ndarray:
    """(2, 3) forward map of the authors' translation: content moves by ``-pixels``."""
    matrix = np.eye(2, 3)
    matrix[0 if horizontal else 1, 2] = -pixels
    return matrix


def _random_sign() -> float:
    # The authors negate every rotate / shear / translate magnitude with probability 1/2.
    return 1.0 if np.random.uniform() < 0.5 else -1.0


def _require_boxes(boxes: np.ndarray | None, augmentation: T.Augmentation) -> np.ndarray:
    if boxes is None:
        raise ValueError(
            f"{type(augmentation).__name__} acts on the pixels of the instance boxes, but the "
            "AugInput has none. Detectron2's DatasetMapper builds AugInput without boxes; use "
            "ssdet.data.augment.PolicyDatasetMapper, or AugInput(image, boxes=...)."
        )
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _box_region(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x0, y0, x1, y1), end-exclusive, of the pixels a box touches."""
    x0, x1 = np.clip([np.floor(box[0]), np.ceil(box[2])], 0, width).astype(int)
    y0, y1 = np.clip([np.floor(box[1]), np.ceil(box[3])], 0, height).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


# ------------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------------


class AffineTransform(T.Transform):
    """Affine warp of the image plane onto an output of the same size.

    Pixels that come from outside the image are set to ``fill``. Boxes are re-fit as the
    axis-aligned box of their transformed corners, then clipped (see the module docstring).
    """

    def __init__(
        self,
        matrix: np.ndarray,
        height: int,
        width: int,
        fill: int = FILL_VALUE,
        interp: int = cv2.INTER_NEAREST,
    ):
        """
        Args:
            matrix: (2, 3) forward map in continuous coordinates,
                ``[x', y'] = matrix[:, :2] @ [x, y] + matrix[:, 2]``.
            height, width: image size (input and output).
            fill: value of the pixels that map from outside the image.
            interp: OpenCV interpolation; the authors' TensorFlow ops use nearest neighbour.
        """
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        assert img.shape[:2] == (self.height, self.width), (img.shape, self.height, self.width)
        return F.warp_affine(img, self.matrix, self.fill, self.interp)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64)
        return coords @ self.matrix[:, :2].T + self.matrix[:, 2]

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        return clip_boxes(super().apply_box(box), self.height, self.width)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return F.warp_affine(segmentation, self.matrix, 0, cv2.INTER_NEAREST)


class FastResizeTransform(T.ResizeTransform):
    """Detectron2's ``ResizeTransform`` resampling uint8 images with OpenCV's bilinear resize.

    Several times faster than its PIL path at COCO sizes. Like the authors' TensorFlow
    ``resize_images`` it does not low-pass filter when shrinking (PIL does; OpenCV's area
    averaging would, at several times the cost for non-integer factors). Other dtypes and
    segmentations take Detectron2's path.
    """

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        if img.dtype != np.uint8 or interp is not None:
            return super().apply_image(img, interp)
        assert img.shape[:2] == (self.h, self.w), (img.shape, self.h, self.w)
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        return out.reshape((self.new_h, self.new_w) + img.shape[2:])


class ClipCropTransform(T.CropTransform):
    """Detectron2's ``CropTransform`` whose boxes are clipped to the crop (see ``clip_boxes``)."""

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        # A crop window that runs past the image (it is padded afterwards) holds content only
        # up to the image border.
        width = self.w if self.orig_w is None else min(self.w, self.orig_w - self.x0)
        height = self.h if self.orig_h is None else min(self.h, self.orig_h - self.y0)
        return clip_boxes(super().apply_box(box), height, width)


class CutoutTransform(T.Transform):
    """Fill a rectangle of the image with a constant; boxes and masks are unchanged."""

    def __init__(self, region: tuple[int, int, int, int], fill: int = FILL_VALUE):
        """
        Args:
            region: (x0, y0, x1, y1) integer pixel bounds, end-exclusive, inside the image.
            fill: the pixel value written.
        """
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return F.cutout(img, self.region, self.fill)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class BoxContentTransform(T.Transform):
    """Transform the pixels inside some boxes, each by its own transform; boxes do not move.

    This is the authors' ``*_Only_BBoxes`` family: the content of a box is rotated, sheared,
    translated, flipped, equalized... inside the box's own frame, and the box stays where it was.
    Regions are processed in order, so where boxes overlap a later one sees the earlier result.
    """

    def __init__(self, regions: list[tuple[int, int, int, int]], transforms: list[T.Transform]):
        """
        Args:
            regions: (x0, y0, x1, y1) integer pixel bounds, end-exclusive, one per transform.
            transforms: each maps an image of its region's size to one of the same size.
        """
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        out = img.copy()
        for (x0, y0, x1, y1), transform in zip(self.regions, self.transforms, strict=True):
            out[y0:y1, x0:x1] = transform.apply_image(out[y0:y1, x0:x1])
        return out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


# ------------------------------------------------------------------------------------------------
# Augmentations: geometric ops that move boxes
# ------------------------------------------------------------------------------------------------


class Rotate(T.Augmentation):
    """Rotate the image and its boxes about the image centre by +-``degrees`` (sign 50/50).

    The authors' ``Rotate_BBox``. Detectron2's ``RotationTransform(expand=False)`` turns the image
    the same way, but fills the corners with 0 and does not clip the boxes.
    """

    def __init__(self, degrees: float, fill: int = FILL_VALUE):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        angle = _random_sign() * self.degrees
        if angle == 0:
            return T.NoOpTransform()
        height, width = image.shape[:2]
        return AffineTransform(rotation_matrix(angle, height, width), height, width, self.fill)


class Shear(T.Augmentation):
    """Shear the image and its boxes by +-``factor`` (sign 50/50): ``ShearX/Y_BBox``."""

    def __init__(self, factor: float, horizontal: bool = True, fill: int = FILL_VALUE):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        factor = _random_sign() * self.factor
        if factor == 0:
            return T.NoOpTransform()
        height, width = image.shape[:2]
        return AffineTransform(shear_matrix(factor, self.horizontal), height, width, self.fill)


class Translate(T.Augmentation):
    """Translate the image and its boxes by +-``pixels`` (sign 50/50): ``TranslateX/Y_BBox``."""

    def __init__(self, pixels: int, horizontal: bool = True, fill: int = FILL_VALUE):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        pixels = _random_sign() * self.pixels
        if pixels == 0:
            return T.NoOpTransform()
        height, width = image.shape[:2]
        matrix = translation_matrix(pixels, self.horizontal)
        return AffineTransform(matrix, height, width, self.fill)


class ScaleJitterCrop(T.Augmentation):
    """Resize by a random scale, then random-crop and pad to a fixed output size.

    RetinaNet's scale jitter, as the authors' ``input_utils.resize_and_crop_image``: draw ``s``
    uniformly in ``scale_range``, resize the image (keeping its aspect ratio) to fit in
    ``s * output_size``, crop a uniformly placed ``output_size`` window where the result is larger,
    and pad it on the right and bottom where it is smaller. Detectron2's ``ResizeScale`` followed by
    ``FixedSizeCrop`` is the same algorithm; this one draws the two crop offsets independently (as
    the authors do, where ``FixedSizeCrop`` shares one draw) and clips the cropped boxes.
    """

    def __init__(
        self,
        output_size: tuple[int, int],
        scale_range: tuple[float, float],
        pad_value: int = FILL_VALUE,
    ):
        """
        Args:
            output_size: (height, width) of the output image, pixels.
            scale_range: (min, max) of the random scale applied to ``output_size``.
            pad_value: pixel value of the padding.
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        height, width = image.shape[:2]
        out_height, out_width = self.output_size
        scale = np.random.uniform(*self.scale_range)
        ratio = min(out_height * scale / height, out_width * scale / width)
        new_height = max(1, int(round(height * ratio)))
        new_width = max(1, int(round(width * ratio)))
        transforms = []
        if (new_height, new_width) != (height, width):
            transforms.append(FastResizeTransform(height, width, new_height, new_width))

        offset_y, offset_x = (
            np.random.uniform(0.0, 1.0, size=2)
            * np.maximum([new_height - out_height, new_width - out_width], 0)
        ).astype(int)
        crop_height, crop_width = min(out_height, new_height), min(out_width, new_width)
        transforms.append(
            ClipCropTransform(
                int(offset_x), int(offset_y), crop_width, crop_height, new_width, new_height
            )
        )
        if (crop_height, crop_width) != (out_height, out_width):
            transforms.append(
                T.PadTransform(
                    0,
                    0,
                    out_width - crop_width,
                    out_height - crop_height,
                    crop_width,
                    crop_height,
                    pad_value=self.pad_value,
                    # Instance masks (RLE) go through apply_segmentation: pad them as background.
                    seg_pad_value=0,
                )
            )
        return T.TransformList(transforms)


# ------------------------------------------------------------------------------------------------
# Augmentations: pixel ops (boxes unchanged)
# ------------------------------------------------------------------------------------------------


class ColorOp(T.Augmentation):
    """A deterministic pixel op from :mod:`ssdet.data.augment.functional`, e.g. ``equalize``.

    Wraps ``fn(image, **kwargs)`` in Detectron2's ``ColorTransform`` (boxes and masks unchanged).
    """

    def __init__(self, fn: Callable[..., np.ndarray], kwargs: dict | None = None):
        """
        Args:
            fn: ``fn(image, **kwargs) -> image`` on uint8 images.
            kwargs: the op's arguments (e.g. ``{"bits": 2}`` for ``posterize``).
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        return T.ColorTransform(functools.partial(self.fn, **(self.kwargs or {})))


class Cutout(T.Augmentation):
    """Fill a square of side ``2 * pad_size`` centred on a uniformly drawn pixel (``Cutout``).

    The square is clipped to the image, so near the borders it is smaller.
    """

    def __init__(self, pad_size: int, fill: int = FILL_VALUE):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        height, width = image.shape[:2]
        if self.pad_size <= 0:
            return T.NoOpTransform()
        center_y, center_x = np.random.randint(height), np.random.randint(width)
        region = (
            max(0, center_x - self.pad_size),
            max(0, center_y - self.pad_size),
            min(width, center_x + self.pad_size),
            min(height, center_y + self.pad_size),
        )
        return CutoutTransform(region, self.fill)


class BBoxCutout(T.Augmentation):
    """Cutout centred inside one uniformly chosen box (the authors' ``BBox_Cutout``).

    The hole is ``pad_fraction`` times the box's height and width, centred on a pixel drawn
    uniformly inside the box, and filled with ``fill`` (the authors' default; they never use
    their fill-with-box-mean option). Images without boxes are left unchanged.
    """

    def __init__(self, pad_fraction: float, fill: int = FILL_VALUE):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray, boxes: np.ndarray | None) -> T.Transform:
        boxes = _require_boxes(boxes, self)
        height, width = image.shape[:2]
        if len(boxes) == 0:
            return T.NoOpTransform()
        x0, y0, x1, y1 = _box_region(boxes[np.random.randint(len(boxes))], height, width)
        if x1 <= x0 or y1 <= y0:
            return T.NoOpTransform()
        pad_height = int(self.pad_fraction * (y1 - y0) / 2)
        pad_width = int(self.pad_fraction * (x1 - x0) / 2)
        center_y, center_x = np.random.randint(y0, y1), np.random.randint(x0, x1)
        region = (
            max(0, center_x - pad_width),
            max(0, center_y - pad_height),
            min(width, center_x + pad_width),
            min(height, center_y + pad_height),
        )
        if region[2] <= region[0] or region[3] <= region[1]:
            return T.NoOpTransform()
        return CutoutTransform(region, self.fill)


class BoxesOnly(T.Augmentation):
    """Apply an op to the pixels inside each box, independently with probability ``prob``.

    The authors' ``*_Only_BBoxes`` ops: boxes are visited in random order; the op sees the box's
    content as its whole image (a rotation turns about the box centre, a cutout lands inside the
    box, a translation leaves ``fill`` where the content moved out). Boxes themselves stay put.
    The op draws its random choices per box, the sign of a rotation, shear or translation
    included, where the authors draw that sign once for all the boxes of an image.
    """

    def __init__(self, op: T.Augmentation, prob: float):
        """
        Args:
            op: an image-only Augmentation (its ``get_transform`` takes ``image``).
            prob: probability of transforming each box. The AutoAugment policies pass a third of
                the sub-policy probability, as the authors do.
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray, boxes: np.ndarray | None) -> T.Transform:
        boxes = _require_boxes(boxes, self)
        height, width = image.shape[:2]
        regions, transforms = [], []
        for index in np.random.permutation(len(boxes)):
            if np.random.uniform() >= self.prob:
                continue
            x0, y0, x1, y1 = _box_region(boxes[index], height, width)
            if x1 <= x0 or y1 <= y0:
                continue
            regions.append((x0, y0, x1, y1))
            transforms.append(self.op.get_transform(image[y0:y1, x0:x1]))
        if not regions:
            return T.NoOpTransform()
        return BoxContentTransform(regions, transforms)
