"""Pixel functions of the detection AutoAugment op set, on uint8 numpy images.

Each function takes an image of shape (H, W) or (H, W, C), dtype uint8, and returns a new image of
the same shape and dtype; inputs are never modified. They follow the authors' TensorFlow ops
(tensorflow/tpu ``models/official/detection/utils/autoaugment_utils.py``), which mirror PIL's
``ImageOps`` / ``ImageEnhance``; differences are noted on each function. OpenCV does the pixel
work: it is several times faster than numpy or a PIL round-trip at COCO sizes.
"""

import cv2
import numpy as np

__all__ = [
    "autocontrast",
    "blend",
    "brightness",
    "color",
    "contrast",
    "cutout",
    "equalize",
    "grayscale",
    "posterize",
    "sharpness",
    "solarize",
    "solarize_add",
    "warp_affine",
]

# Channel orders whose gray conversion the color ops know (Detectron2's INPUT.FORMAT values).
_GRAY_CONVERSIONS = {"RGB": cv2.COLOR_RGB2GRAY, "BGR": cv2.COLOR_BGR2GRAY}


def _check_uint8(image: np.ndarray) -> None:
    if image.dtype != np.uint8:
        raise TypeError(f"AutoAugment color ops need uint8 images, got dtype {image.dtype}")


def _reshape_like(out: np.ndarray, image: np.ndarray) -> np.ndarray:
    # OpenCV returns (H, W) for (H, W, 1) inputs; restore the caller's shape.
    return out.reshape(image.shape)


def _apply_luts(image: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """Map each channel through its own 256-entry lookup table.

    Args:
        image: (H, W) or (H, W, C) uint8.
        luts: (C, 256) uint8, one table per channel (C = 1 for 2-D images).
    """
    num_channels = luts.shape[0]
    if num_channels == 1:
        table = np.ascontiguousarray(luts[0])
    else:
        table = np.ascontiguousarray(luts.T.reshape(256, 1, num_channels))
    return _reshape_like(cv2.LUT(image, table), image)


def _channel_histograms(image: np.ndarray) -> np.ndarray:
    """(C, 256) int64 histogram of each channel (C = 1 for 2-D images)."""
    num_channels = 1 if image.ndim == 2 else image.shape[2]
    image = image.reshape(image.shape[0], image.shape[1], num_channels)
    return np.stack(
        [cv2.calcHist([image], [c], None, [256], [0, 256])[:, 0] for c in range(num_channels)]
    ).astype(np.int64)


def grayscale(image: np.ndarray, image_format: str) -> np.ndarray:
    """Luma (ITU-R 601 weights, as PIL's ``convert("L")``) of an image, shape (H, W).

    Args:
        image: (H, W), (H, W, 1) or (H, W, 3) uint8.
        image_format: channel order of 3-channel images, "RGB" or "BGR"; gray images ignore it.
    """
    if image.ndim == 2 or image.shape[2] == 1:
        return image.reshape(image.shape[:2])
    return cv2.cvtColor(image, _GRAY_CONVERSIONS[image_format])


def blend(degenerate: np.ndarray | float, image: np.ndarray, factor: float) -> np.ndarray:
    """``degenerate + factor * (image - degenerate)``, saturated to [0, 255].

    Factor 0 gives ``degenerate``, 1 gives ``image``, above 1 extrapolates away from
    ``degenerate`` (PIL's ``ImageEnhance`` semantics). OpenCV rounds where TensorFlow truncates:
    outputs differ by at most one gray level.

    Args:
        degenerate: an image like ``image``, or a constant gray level.
        image: (H, W) or (H, W, C) uint8.
        factor: blend factor, >= 0.
    """
    _check_uint8(image)
    if np.isscalar(degenerate):
        out = cv2.addWeighted(image, factor, image, 0.0, (1.0 - factor) * float(degenerate))
    else:
        out = cv2.addWeighted(image, factor, degenerate, 1.0 - factor, 0.0)
    return _reshape_like(out, image)


def autocontrast(image: np.ndarray) -> np.ndarray:
    """Stretch each channel linearly so that its minimum maps to 0 and its maximum to 255."""
    _check_uint8(image)
    histograms = _channel_histograms(image) > 0
    low = histograms.argmax(axis=1).astype(np.float32)
    high = (255 - histograms[:, ::-1].argmax(axis=1)).astype(np.float32)
    levels = np.arange(256, dtype=np.float32)
    # Constant channels are left as they are (the authors' `hi > lo` condition).
    scale = np.where(high > low, 255.0 / np.maximum(high - low, 1.0), 1.0)
    offset = np.where(high > low, -low * scale, 0.0)
    luts = np.clip(levels[None, :] * scale[:, None] + offset[:, None], 0, 255)
    return _apply_luts(image, luts.astype(np.uint8))


def equalize(image: np.ndarray) -> np.ndarray:
    """Histogram-equalize each channel (PIL's ``ImageOps.equalize``, as the authors build it)."""
    _check_uint8(image)
    luts = []
    for histogram in _channel_histograms(image):
        nonzero = histogram[histogram > 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if step == 0:
            # A (nearly) constant channel has nothing to equalize.
            luts.append(np.arange(256))
            continue
        lut = (np.cumsum(histogram) + step // 2) // step
        luts.append(np.clip(np.concatenate([[0], lut[:-1]]), 0, 255))
    return _apply_luts(image, np.stack(luts).astype(np.uint8))


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """Keep the ``bits`` most significant bits of each pixel.

    The authors' magnitude mapping gives ``bits = 0`` at levels below 2.5; TensorFlow clamps the
    resulting shift of 8 to 7, so 0 bits behaves as 1 bit (pixels become 0 or 128). This function
    does the same, where PIL would return a black image.
    """
    _check_uint8(image)
    shift = min(8 - int(bits), 7)
    return image & np.uint8((0xFF << shift) & 0xFF)


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
    """Invert (``255 - x``) every pixel ``x >= threshold``; threshold 256 is the identity."""
    _check_uint8(image)
    levels = np.arange(256)
    lut = np.where(levels < threshold, levels, 255 - levels).astype(np.uint8)
    return _apply_luts(image, lut[None])


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    """Add ``addition`` (saturated) to every pixel below ``threshold``."""
    _check_uint8(image)
    levels = np.arange(256)
    lut = np.where(levels < threshold, np.clip(levels + addition, 0, 255), levels)
    return _apply_luts(image, lut.astype(np.uint8)[None])


def color(image: np.ndarray, factor: float, image_format: str) -> np.ndarray:
    """Saturation: blend the image with its own gray version (PIL's ``ImageEnhance.Color``)."""
    _check_uint8(image)
    if image.ndim == 2 or image.shape[2] == 1:
        return image.copy()
    gray = grayscale(image, image_format)
    return blend(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), image, factor)


def contrast(image: np.ndarray, factor: float, image_format: str) -> np.ndarray:
    """Blend the image with its mean gray level (PIL's ``ImageEnhance.Contrast``).

    The authors' TensorFlow op divides the histogram's *count* by 256 instead of taking the mean
    gray level, which blends towards white on any image above 256 pixels; this follows PIL, whose
    behaviour their op's docstring names as the intent.
    """
    _check_uint8(image)
    mean = int(grayscale(image, image_format).mean() + 0.5)
    return blend(float(mean), image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend the image with black (PIL's ``ImageEnhance.Brightness``)."""
    return blend(0.0, image, factor)


# PIL's SMOOTH filter, the degenerate image of ImageEnhance.Sharpness.
_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend the image with its smoothed version (PIL's ``ImageEnhance.Sharpness``).

    As in PIL, the one-pixel border keeps its original values in the smoothed image.
    """
    _check_uint8(image)
    smoothed = _reshape_like(cv2.filter2D(image, -1, _SMOOTH_KERNEL), image)
    smoothed[0], smoothed[-1] = image[0], image[-1]
    smoothed[:, 0], smoothed[:, -1] = image[:, 0], image[:, -1]
    return blend(smoothed, image, factor)


def cutout(image: np.ndarray, region: tuple[int, int, int, int], fill: int) -> np.ndarray:
    """Fill a rectangle of the image with a constant.

    Args:
        image: (H, W) or (H, W, C), any dtype.
        region: (x0, y0, x1, y1) integer pixel bounds, end-exclusive, already inside the image.
        fill: the pixel value written in every channel.
    """
    x0, y0, x1, y1 = region
    out = image.copy()
    out[y0:y1, x0:x1] = fill
    return out


def warp_affine(
    image: np.ndarray,
    matrix: np.ndarray,
    fill: float,
    interp: int = cv2.INTER_NEAREST,
) -> np.ndarray:
    """Warp an image with a forward affine map onto an output of the same size.

    Args:
        image: (H, W) or (H, W, C), uint8 or float.
        matrix: (2, 3) forward map in Detectron2's continuous coordinates, where pixel (i, j)
            covers [j, j + 1] x [i, i + 1]: ``[x', y'] = matrix[:, :2] @ [x, y] + matrix[:, 2]``.
        fill: value of output pixels that map from outside the image.
        interp: OpenCV interpolation flag.

    Returns:
        The warped image, shape and dtype of ``image``.
    """
    height, width = image.shape[:2]
    linear, shift = matrix[:, :2], matrix[:, 2]
    # OpenCV indexes pixel centres at integers, half a pixel off the continuous coordinates:
    # p' + 0.5 = A (p + 0.5) + t  =>  p' = A p + (t + A @ 0.5 - 0.5).
    pixel_matrix = np.concatenate([linear, (shift + linear.sum(axis=1) * 0.5 - 0.5)[:, None]], 1)
    out = cv2.warpAffine(
        image,
        pixel_matrix,
        (width, height),
        flags=interp,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(fill, fill, fill, fill),
    )
    return _reshape_like(out, image)
