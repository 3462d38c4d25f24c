"""The pixel functions against PIL, whose ops the authors' TensorFlow ops reproduce."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from ssdet.data.augment import functional as F

SHAPES = [(37, 53), (37, 53, 1), (37, 53, 3), (480, 640, 3)]


def _image(shape, seed=0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    # A smooth ramp plus noise: histograms that are neither flat nor degenerate.
    ramp = np.linspace(30, 200, shape[0] * shape[1]).reshape(shape[:2])
    ramp = ramp[..., None] if len(shape) == 3 else ramp
    return np.clip(ramp + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)


def _from_pil(pil: Image.Image, like: np.ndarray) -> np.ndarray:
    return np.asarray(pil).reshape(like.shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_lookup_table_ops_match_pil(shape):
    image = _image(shape)
    np.testing.assert_array_equal(
        F.equalize(image), _from_pil(ImageOps.equalize(_pil(image)), image)
    )
    # float32 arithmetic, as TensorFlow's; PIL's float64 may land one level lower at the top.
    autocontrast = _from_pil(ImageOps.autocontrast(_pil(image)), image)
    assert np.abs(F.autocontrast(image).astype(int) - autocontrast).max() <= 1
    np.testing.assert_array_equal(
        F.solarize(image, 100), _from_pil(ImageOps.solarize(_pil(image), 100), image)
    )
    for bits in (1, 2, 4, 8):
        np.testing.assert_array_equal(
            F.posterize(image, bits), _from_pil(ImageOps.posterize(_pil(image), bits), image)
        )


@pytest.mark.parametrize("shape", [(37, 53, 3), (480, 640, 3)])
@pytest.mark.parametrize("factor", [0.1, 0.7, 1.0, 1.9])
def test_enhance_ops_match_pil_within_rounding(shape, factor):
    rgb = _image(shape)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    cases = [
        (F.color(bgr, factor, "BGR")[:, :, ::-1], ImageEnhance.Color),
        (F.color(rgb, factor, "RGB"), ImageEnhance.Color),
        (F.contrast(rgb, factor, "RGB"), ImageEnhance.Contrast),
        (F.brightness(rgb, factor), ImageEnhance.Brightness),
        (F.sharpness(rgb, factor), ImageEnhance.Sharpness),
    ]
    for ours, enhancer in cases:
        expected = np.asarray(enhancer(_pil(rgb)).enhance(factor)).astype(int)
        # PIL and OpenCV round gray levels and blends slightly differently.
        assert np.abs(ours.astype(int) - expected).max() <= 2, enhancer.__name__


def test_posterize_zero_bits_is_one_bit_as_tensorflow():
    image = _image((37, 53, 3))
    assert set(np.unique(F.posterize(image, 0))) <= {0, 128}


def test_solarize_add_and_edge_cases():
    image = np.array([[0, 100, 127, 128, 250]], dtype=np.uint8)
    np.testing.assert_array_equal(F.solarize_add(image, 110), [[110, 210, 237, 128, 250]])
    np.testing.assert_array_equal(F.solarize(image, 256), image)
    constant = np.full((5, 7, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(F.equalize(constant), constant)
    np.testing.assert_array_equal(F.autocontrast(constant), constant)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_color_ops_keep_gray_shapes_and_do_not_modify_input(shape):
    image = _image(shape)
    before = image.copy()
    outputs = [
        F.color(image, 1.5, "BGR"),
        F.contrast(image, 1.5, "BGR"),
        F.brightness(image, 1.5),
        F.sharpness(image, 1.5),
        F.cutout(image, (3, 4, 20, 30), 128),
        F.warp_affine(image, np.array([[1.0, 0.2, 3.0], [0.0, 1.0, -2.0]]), 128),
    ]
    for out in outputs:
        assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)


def test_color_ops_reject_float_images():
    with pytest.raises(TypeError, match="uint8"):
        F.equalize(np.zeros((5, 5, 3), dtype=np.float32))


def test_warp_affine_integer_translation_is_exact():
    image = _image((37, 53, 3))
    out = F.warp_affine(image, np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0]]), fill=128)
    np.testing.assert_array_equal(out[:-3, 5:], image[3:, :-5])
    assert (out[:, :5] == 128).all() and (out[-3:] == 128).all()
