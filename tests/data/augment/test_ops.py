"""Every AutoAugment op as a Detectron2 Augmentation: boxes follow pixels, seeds reproduce."""

import numpy as np
import pytest
from detectron2.data import transforms as T

from ssdet.data.augment import functional as F
from ssdet.data.augment.autoaugment import BOX_ONLY_OPS, build_op
from ssdet.data.augment.checks import GEOMETRIC_OPS, run_box_consistency_trials
from ssdet.data.augment.ops import (
    AffineTransform,
    BBoxCutout,
    BoxesOnly,
    ClipCropTransform,
    ColorOp,
    FastResizeTransform,
    Rotate,
    ScaleJitterCrop,
    clip_boxes,
    rotation_matrix,
)

ALL_OPS = sorted(
    [
        "AutoContrast",
        "Equalize",
        "Posterize",
        "Solarize",
        "SolarizeAdd",
        "Color",
        "Contrast",
        "Brightness",
        "Sharpness",
        "Cutout",
        "BBox_Cutout",
        *GEOMETRIC_OPS,
        *BOX_ONLY_OPS,
    ]
)
SHAPES = [(37, 53), (37, 53, 1), (37, 53, 3)]


def _image(shape, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=shape, dtype=np.uint8)


def _boxes() -> np.ndarray:
    return np.array([[3.5, 4.0, 30.0, 20.5], [20.0, 10.0, 52.0, 36.0]], dtype=np.float32)


def _run(augmentation, image, boxes, seed):
    np.random.seed(seed)
    aug_input = T.AugInput(image.copy(), boxes=boxes.copy())
    transform = augmentation(aug_input)
    return aug_input.image, aug_input.boxes, transform


def test_geometric_ops_boxes_bound_their_pixels():
    # Random image sizes, rectangles, ops, levels and scale-jitter tails (see checks.py).
    result = run_box_consistency_trials(1000)
    assert result["failures"] == 0, result["failed"]
    assert result["compared_equal"] > 100


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_op_runs_on_odd_gray_and_rgb_images(name, shape):
    image = _image(shape)
    for level in (0, 3, 10):
        augmentation, _ = build_op(name, 1.0, level)
        for seed in range(3):
            out, boxes, transform = _run(augmentation, image, _boxes(), seed)
            assert out.shape == image.shape and out.dtype == np.uint8
            assert boxes.shape == (2, 4)
            assert (boxes >= 0).all() and (boxes[:, 2] <= 53).all() and (boxes[:, 3] <= 37).all()
            if name not in GEOMETRIC_OPS:
                # Pixel ops, including the box-only ones, never move boxes.
                np.testing.assert_array_equal(boxes, _boxes())
            # The returned transform replays the augmentation.
            np.testing.assert_array_equal(transform.apply_image(image.copy()), out)


@pytest.mark.parametrize("name", ALL_OPS)
def test_same_seed_same_output(name):
    image, boxes = _image((37, 53, 3)), _boxes()
    augmentation, _ = build_op(name, 1.0, 7)
    first = _run(augmentation, image, boxes, seed=3)
    second = _run(augmentation, image, boxes, seed=3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize("name", [*GEOMETRIC_OPS, "Cutout", "BBox_Cutout"])
def test_level_zero_is_identity(name):
    image, boxes = _image((37, 53, 3)), _boxes()
    augmentation, _ = build_op(name, 1.0, 0)
    for seed in range(5):
        out, out_boxes, _ = _run(augmentation, image, boxes, seed)
        np.testing.assert_array_equal(out, image)
        np.testing.assert_array_equal(out_boxes, boxes)


def test_rotation_refits_the_transformed_corners():
    transform = AffineTransform(rotation_matrix(30.0, 37, 53), 37, 53)
    box = np.array([[20.0, 15.0, 30.0, 22.0]])
    corners = np.array([[20, 15], [30, 15], [20, 22], [30, 22]], dtype=np.float64)
    moved = transform.apply_coords(corners)
    expected = np.concatenate([moved.min(axis=0), moved.max(axis=0)])
    np.testing.assert_allclose(transform.apply_box(box)[0], expected)


def test_translate_moves_pixels_and_boxes_by_the_same_whole_pixels():
    image = np.zeros((37, 53), dtype=np.uint8)
    image[10:20, 5:15] = 255
    augmentation, _ = build_op("TranslateX_BBox", 1.0, 0.4)  # 10 px
    out, boxes, _ = _run(augmentation, image, np.array([[5, 10, 15, 20]], np.float32), seed=0)
    shift = boxes[0, 0] - 5
    assert abs(shift) == 10
    cols = np.flatnonzero((out == 255).any(axis=0))
    assert (cols[0], cols[-1] + 1) == (5 + shift, 15 + shift)


def test_clip_boxes_drops_slivers():
    boxes = np.array([[-5.0, 2.0, 0.5, 10.0], [3.0, 3.0, 60.0, 40.0], [10.0, 36.5, 20.0, 45.0]])
    clipped = clip_boxes(boxes, height=37, width=53)
    np.testing.assert_array_equal(clipped[1], [3, 3, 53, 37])
    # A box left thinner than a pixel collapses to zero area (filter_empty_instances drops it).
    assert clipped[0, 2] == clipped[0, 0] and clipped[2, 3] == clipped[2, 1]


def test_crop_clips_boxes_to_the_crop_and_the_image():
    crop = ClipCropTransform(10, 5, 30, 20, orig_w=35, orig_h=40)
    boxes = crop.apply_box(np.array([[0.0, 0.0, 20.0, 12.0], [12.0, 6.0, 60.0, 60.0]]))
    np.testing.assert_array_equal(boxes, [[0, 0, 10, 7], [2, 1, 25, 20]])


@pytest.mark.parametrize("shape", [(37, 53, 3), (480, 640, 3), (17, 900)])
@pytest.mark.parametrize("scale_range", [(0.8, 1.2), (0.5, 2.0)])
def test_scale_jitter_crop_output_size_and_boxes(shape, scale_range):
    augmentation = ScaleJitterCrop((64, 96), scale_range)
    image = _image(shape)
    height, width = shape[:2]
    boxes = np.array(
        [[0, 0, width, height], [width * 0.4, height * 0.4, width * 0.6, height * 0.6]]
    )
    for seed in range(10):
        out, out_boxes, _ = _run(augmentation, image, boxes.astype(np.float32), seed)
        assert out.shape[:2] == (64, 96)
        assert (out_boxes >= 0).all()
        assert (out_boxes[:, 2] <= 96).all() and (out_boxes[:, 3] <= 64).all()


def test_scale_jitter_with_zero_boxes():
    out, boxes, _ = _run(
        ScaleJitterCrop((64, 64), (0.5, 2.0)), _image((37, 53, 3)), np.zeros((0, 4), np.float32), 0
    )
    assert out.shape == (64, 64, 3) and boxes.shape == (0, 4)


def test_fast_resize_matches_detectron2_geometry():
    image = _image((37, 53, 3))
    for new_h, new_w in [(74, 106), (19, 27)]:
        ours = FastResizeTransform(37, 53, new_h, new_w)
        theirs = T.ResizeTransform(37, 53, new_h, new_w)
        assert ours.apply_image(image).shape == theirs.apply_image(image).shape
        box = np.array([[3.0, 4.0, 30.0, 20.0]])
        np.testing.assert_array_equal(ours.apply_box(box.copy()), theirs.apply_box(box.copy()))
        # Same resampling up to interpolation details.
        diff = ours.apply_image(image).astype(int) - theirs.apply_image(image).astype(int)
        assert np.abs(diff).mean() < 40


def test_box_only_ops_touch_only_the_box_pixels():
    image = np.full((37, 53, 3), 200, dtype=np.uint8)
    invert = BoxesOnly(ColorOp(F.solarize, {"threshold": 0}), prob=1.0)
    out, _, _ = _run(invert, image, np.array([[5, 6, 15, 20]], np.float32), seed=0)
    assert (out[6:20, 5:15] == 55).all()
    out[6:20, 5:15] = 200
    assert (out == 200).all()


def test_box_ops_without_boxes():
    image = _image((37, 53, 3))
    for augmentation in (BoxesOnly(Rotate(30.0), 1.0), BBoxCutout(0.75)):
        out, _, transform = _run(augmentation, image, np.zeros((0, 4), np.float32), seed=0)
        np.testing.assert_array_equal(out, image)
        assert isinstance(transform, T.NoOpTransform)
        # Detectron2's DatasetMapper builds AugInput without boxes: a clear error, not a no-op.
        with pytest.raises(ValueError, match="PolicyDatasetMapper"):
            augmentation(T.AugInput(image))
