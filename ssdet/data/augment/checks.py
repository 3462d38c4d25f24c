"""Box-consistency check: a transformed box must bound the transformed pixels of its object.

A trial draws a filled rectangle on a blank image of random (often odd) size, runs image and box
through geometric augmentations, and compares the output box with the bounding box of the
rectangle's pixels in the output image (the "mask box"):

* when the transformed rectangle stays inside the image, the two must agree within the tolerance:
  after one rotation or shear the output box is the axis-aligned fit of the transformed corners,
  which is exactly the bounding box of the transformed rectangle;
* when the image border or the crop cuts it, the output box is the fit clipped to the image, which
  may be looser than the visible part, so the mask box must lie inside the output box;
* a dropped box (zero area) is right when the visible part is thinner than ``MIN_BOX_SIZE`` plus
  the tolerance. Where the crop cut the whole object away, a rotated or sheared box may keep a
  corner of its looser fit (as in the authors' code); the trial then has nothing to compare.

Used by the tests and ``benchmarks/bench_augment.py``.
"""

import dataclasses

import numpy as np
from detectron2.data import transforms as T

from ssdet.data.augment.autoaugment import build_op
from ssdet.data.augment.ops import MIN_BOX_SIZE, FastResizeTransform, ScaleJitterCrop

__all__ = ["GEOMETRIC_OPS", "TrialResult", "box_consistency_trial", "run_box_consistency_trials"]

# The AutoAugment ops that move boxes.
GEOMETRIC_OPS = ("Rotate_BBox", "ShearX_BBox", "ShearY_BBox", "TranslateX_BBox", "TranslateY_BBox")
# Object pixels are drawn at 255; fill and padding are 128, so a threshold between them separates
# the object even where bilinear resizing blends it with the padding.
_OBJECT_VALUE = 255
_MASK_THRESHOLD = 192
# Objects are at least this many pixels wide and tall, and the scale jitter shrinks them at most
# ~3.3x, so that resampling keeps them above the threshold: thinner ones would fade below it
# along part of their length, which says nothing about the boxes.
_MIN_OBJECT_SIZE = 8


@dataclasses.dataclass
class TrialResult:
    """Outcome of one trial."""

    # Largest distance (pixels) between a side of the output box and of the mask's bounding box;
    # where the box or the object is gone, the other one's smaller side instead.
    error: float
    # The tolerance the trial was held to (pixels).
    tolerance: float
    passed: bool
    # Whether both the box and the object survived, so that their sides were compared.
    compared: bool
    # Whether the rectangle stayed inside the image, so that the comparison was for equality.
    inside: bool
    # What ran, for failure reports.
    description: str


def _mask_box(image: np.ndarray) -> np.ndarray | None:
    plane = image if image.ndim == 2 else image[:, :, 0]
    rows = np.flatnonzero((plane >= _MASK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((plane >= _MASK_THRESHOLD).any(axis=0))
    if len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def _stays_inside(
    transforms: T.TransformList, box: tuple[int, int, int, int], image_size: tuple[int, int]
) -> bool:
    """Whether the transformed rectangle stays inside the image content at every step."""
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
    height, width = image_size
    for transform in transforms:
        corners = transform.apply_coords(corners)
        if isinstance(transform, T.ResizeTransform):
            height, width = transform.new_h, transform.new_w
        elif isinstance(transform, T.CropTransform):
            height = min(transform.h, height - transform.y0)
            width = min(transform.w, width - transform.x0)
        # Other transforms keep the content's size (padding adds no content).
        if (corners < 0).any() or (corners > [width, height]).any():
            return False
    return True


def box_consistency_trial(seed: int, base_tolerance: float = 2.0) -> TrialResult:
    """Run one random trial.

    The trial draws: an image size in [9, 300) x [9, 300), a gray (H, W), (H, W, 1) or RGB image,
    a rectangle of at least 8 x 8 pixels, one geometric AutoAugment op at a random level in
    [0, 10], and with probability 1/2 a following flip and :class:`ScaleJitterCrop` (the policies'
    tail) to an output 0.6 to 1.5 times the image size with a scale range inside (0.5, 2.0).

    Args:
        seed: seeds both the trial's choices and ``np.random`` (the augmentations' RNG).
        base_tolerance: allowed error in pixels; multiplied by the resize factor where the
            trial enlarges the image, since resampling blurs edges over that many pixels.

    Returns:
        The trial's result. A box the ops dropped (zero area) passes when the object kept fewer
        than ``MIN_BOX_SIZE + base_tolerance`` pixels in width or height.
    """
    rng = np.random.RandomState(seed)
    height, width = (int(v) for v in rng.randint(9, 300, size=2))
    shape = [(height, width), (height, width, 1), (height, width, 3)][rng.randint(3)]
    x0 = int(rng.randint(0, width - _MIN_OBJECT_SIZE + 1))
    x1 = int(rng.randint(x0 + _MIN_OBJECT_SIZE, width + 1))
    y0 = int(rng.randint(0, height - _MIN_OBJECT_SIZE + 1))
    y1 = int(rng.randint(y0 + _MIN_OBJECT_SIZE, height + 1))
    image = np.zeros(shape, dtype=np.uint8)
    image[y0:y1, x0:x1] = _OBJECT_VALUE

    name = GEOMETRIC_OPS[rng.randint(len(GEOMETRIC_OPS))]
    level = float(rng.uniform(0, 10))
    augmentations = [build_op(name, 1.0, level)[0]]
    description = f"seed={seed} shape={shape} box={[x0, y0, x1, y1]} {name}@{level:.2f}"
    if rng.uniform() < 0.5:
        output_size = tuple(int(v * rng.uniform(0.6, 1.5)) for v in (height, width))
        scale_range = tuple(float(v) for v in np.sort(rng.uniform(0.5, 2.0, size=2)))
        augmentations += [T.RandomFlip(prob=0.5), ScaleJitterCrop(output_size, scale_range)]
        description += f" + flip + ScaleJitterCrop({output_size}, {scale_range})"

    np.random.seed(seed)
    aug_input = T.AugInput(image, boxes=np.array([[x0, y0, x1, y1]], dtype=np.float32))
    transforms = T.AugmentationList(augmentations)(aug_input)
    enlargement = max(
        [
            max(t.new_h / t.h, t.new_w / t.w)
            for t in transforms
            if isinstance(t, FastResizeTransform)
        ],
        default=1.0,
    )
    tolerance = base_tolerance * max(1.0, enlargement)

    box = aug_input.boxes[0].astype(np.float64)
    mask_box = _mask_box(aug_input.image)
    box_dropped = box[2] - box[0] <= 0 or box[3] - box[1] <= 0
    inside = _stays_inside(transforms, (x0, y0, x1, y1), (height, width))
    if mask_box is None:
        if not inside:
            # The border or the crop cut the whole object away. A rotated or sheared box may
            # keep a corner of its (looser) fit inside the image: allowed, nothing to compare.
            return TrialResult(0.0, tolerance, True, False, inside, description)
        extent = 0.0 if box_dropped else min(box[2] - box[0], box[3] - box[1])
        return TrialResult(extent, tolerance, extent <= tolerance, False, inside, description)
    if box_dropped:
        extent = min(mask_box[2] - mask_box[0], mask_box[3] - mask_box[1])
        limit = MIN_BOX_SIZE + tolerance
        return TrialResult(extent, limit, extent <= limit, False, inside, description)

    if inside:
        error = float(np.abs(box - mask_box).max())
    else:
        # Only containment is required: how far does the mask box stick out of the box?
        error = float(max(np.max(box[:2] - mask_box[:2]), np.max(mask_box[2:] - box[2:]), 0.0))
    return TrialResult(error, tolerance, error <= tolerance, True, inside, description)


def run_box_consistency_trials(num_trials: int, first_seed: int = 0) -> dict:
    """Run trials with seeds ``first_seed .. first_seed + num_trials - 1``.

    Returns:
        {"trials", "failures", "compared" (trials where box and object both survived),
        "compared_equal" (of those, the ones held to equality, the rest to containment),
        "max_error_px" (over the compared trials), "failed" (up to 10 failure descriptions)}.
    """
    results = [box_consistency_trial(seed) for seed in range(first_seed, first_seed + num_trials)]
    failed = [r for r in results if not r.passed]
    return {
        "trials": num_trials,
        "failures": len(failed),
        "compared": sum(r.compared for r in results),
        "compared_equal": sum(r.compared and r.inside for r in results),
        "max_error_px": max((r.error for r in results if r.compared), default=0.0),
        "failed": [
            f"{r.description}: error {r.error:.2f} > {r.tolerance:.2f}" for r in failed[:10]
        ],
    }
