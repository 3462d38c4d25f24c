"""The mini world's drawing: the shape classes, layers and their compositing, colors,
backgrounds and image files, shared by mini-COCO and mini-ImageNet."""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from ssdet.data.builtin_meta import MINI_IMAGENET_CLASSES

JPEG_QUALITY = 90


# mini-ImageNet's ground-truth side file, next to its split folders (never read by training).
GROUND_TRUTH_DIR = "annotations"


# Keys that make every image's random generator distinct: [seed, dataset, split, (class,) index].
_DATASET_KEYS = {"mini_coco": 1, "mini_imagenet": 2}


_SPLIT_KEYS = {"train": 0, "val": 1}


# Image shapes as (width, height) multiples of the base size: landscape, portrait, square and a
# larger landscape, so that aspect-ratio grouping in the data loader has groups to form.
_COCO_SHAPES = [(1.0, 0.75), (0.75, 1.0), (1.0, 1.0), (1.2, 0.9)]


_IMAGENET_SHAPES = [(1.0, 1.0), (1.125, 0.875), (0.875, 1.125), (1.0, 0.75)]


# A pixel belongs to a layer where the layer's anti-aliased coverage is at least half.
_COVERED = 128


# fillPoly's fixed-point precision: 4 fractional bits give sub-pixel vertices, hence smooth edges.
_SHIFT = 4


@dataclass(frozen=True)
class _Shape:
    """A shape in unit coordinates: filled polygons (united) minus holes (cut after filling)."""

    fills: tuple[np.ndarray, ...]
    holes: tuple[np.ndarray, ...] = ()


def _ellipse(cx: float = 0.0, cy: float = 0.0, r: float = 1.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2.0 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _star() -> np.ndarray:
    outer, inner = _regular(5), _regular(5, r=0.42, phase=-np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    # Image rows grow downwards, so negate y to put the heart's point at the bottom.
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _polygon(points: list[tuple[float, float]]) -> np.ndarray:
    return np.asarray(points, dtype=np.float64)


def _normalized(shape: _Shape) -> _Shape:
    """Center the shape's box on the origin and scale it to a box of geometric-mean side 2.

    The sampled object size then means the same thing for every class: about the square root of
    the area of the object's (unrotated, unstretched) box.
    """
    pts = np.concatenate(shape.fills)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    center, scale = (lo + hi) / 2.0, 2.0 / math.sqrt(float(np.prod(hi - lo)))
    return _Shape(
        fills=tuple((p - center) * scale for p in shape.fills),
        holes=tuple((p - center) * scale for p in shape.holes),
    )


_SHAPES: dict[str, _Shape] = {
    name: _normalized(shape)
    for name, shape in {
        "circle": _Shape((_ellipse(),)),
        "square": _Shape((_regular(4, phase=np.pi / 4),)),
        "triangle": _Shape((_regular(3),)),
        "star": _Shape((_star(),)),
        "cross": _Shape(
            (
                _polygon(
                    [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3)]
                    + [(0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]
                ),
            )
        ),
        "ring": _Shape((_ellipse(),), (_ellipse(r=0.55),)),
        "hexagon": _Shape((_regular(6, phase=0.0),)),
        "heart": _Shape((_heart(),)),
        "arrow": _Shape(
            (
                _polygon(
                    [(-1, -0.2), (0.15, -0.2), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.2)]
                    + [(-1, 0.2)]
                ),
            )
        ),
        "crescent": _Shape((_ellipse(),), (_ellipse(cx=0.5, r=0.85),)),
        "tee": _Shape(
            (
                _polygon(
                    [(-1, -1), (1, -1), (1, -0.45), (0.27, -0.45), (0.27, 1), (-0.27, 1)]
                    + [(-0.27, -0.45), (-1, -0.45)]
                ),
            )
        ),
        "frame": _Shape((_regular(4, phase=np.pi / 4),), (_regular(4, r=0.6, phase=np.pi / 4),)),
        "bolt": _Shape(
            (
                _polygon(
                    [(-0.2, -1), (0.5, -1), (0.1, -0.15), (0.55, -0.15), (-0.35, 1), (-0.05, 0.1)]
                    + [(-0.5, 0.1)]
                ),
            )
        ),
        "clover": _Shape(
            tuple(_ellipse(0.5 * math.cos(a), 0.5 * math.sin(a), 0.5) for a in (-1.57, 0.52, 2.62))
            + (_regular(3, r=0.5),)
        ),
    }.items()
}


assert list(_SHAPES) == MINI_IMAGENET_CLASSES


@dataclass
class _Layer:
    """Anti-aliased coverage (0-255) of one drawn thing, its top-left corner at ``(x0, y0)``."""

    x0: int
    y0: int
    alpha: np.ndarray


def _fill_polygons(canvas: np.ndarray, polygons: Iterable[np.ndarray], value: int) -> None:
    for poly in polygons:
        # One call per polygon, so that overlapping parts (clover's leaves) are united.
        pts = np.round(poly * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], value, lineType=cv2.LINE_AA, shift=_SHIFT)


def _render_shape(
    name: str, cx: float, cy: float, size: float, stretch: float, angle: float
) -> _Layer:
    """Rasterize a shape on a canvas just large enough for it.

    Args:
        name: a key of ``_SHAPES``.
        cx, cy: the shape's center in image pixels.
        size: the geometric-mean side of the unrotated shape's box, in pixels.
        stretch: width / height of that box (1 keeps the shape's own proportions).
        angle: rotation in radians.

    Returns:
        The layer; its coverage may extend past the image, which :func:`_clip` handles.
    """
    shape = _SHAPES[name]
    c, s = math.cos(angle), math.sin(angle)
    scale = np.array([math.sqrt(stretch), 1.0 / math.sqrt(stretch)]) * (size / 2.0)
    rotation = np.array([[c, s], [-s, c]])

    def place(poly: np.ndarray) -> np.ndarray:
        return (poly * scale) @ rotation + (cx, cy)

    fills = [place(p) for p in shape.fills]
    holes = [place(p) for p in shape.holes]
    pts = np.concatenate(fills)
    x0, y0 = (np.floor(pts.min(axis=0)) - 1).astype(int)
    x1, y1 = (np.ceil(pts.max(axis=0)) + 2).astype(int)
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    # Pixel centers sit at integer coordinates in cv2, so a unit square [0, 1) is centered at 0.5.
    offset = np.array([x0 + 0.5, y0 + 0.5])
    _fill_polygons(alpha, [p - offset for p in fills], 255)
    _fill_polygons(alpha, [p - offset for p in holes], 0)
    return _Layer(int(x0), int(y0), alpha)


def _fill_ratio(name: str) -> float:
    """The fraction of its (unrotated, unstretched) box that a shape covers."""
    size = 256
    alpha = _render_shape(name, 0.0, 0.0, size, 1.0, 0.0).alpha
    return float(alpha.sum(dtype=np.int64)) / 255.0 / size**2


# Converts a sampled object area into a drawing size, so that sizes mean areas for every class.
_FILL_RATIO = {name: _fill_ratio(name) for name in _SHAPES}


def _clip(layer: _Layer, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The image region a layer covers and the matching part of its coverage, or None if none."""
    h, w = layer.alpha.shape
    ix0, iy0 = max(layer.x0, 0), max(layer.y0, 0)
    ix1, iy1 = min(layer.x0 + w, width), min(layer.y0 + h, height)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    alpha = layer.alpha[iy0 - layer.y0 : iy1 - layer.y0, ix0 - layer.x0 : ix1 - layer.x0]
    return (slice(iy0, iy1), slice(ix0, ix1)), alpha


def _composite(
    image: np.ndarray,
    layer: _Layer,
    color: np.ndarray,
    rng: np.random.Generator,
    shading: float,
    owner: np.ndarray | None = None,
    owner_id: int = -1,
) -> None:
    """Paint a layer over ``image`` (float32 BGR) with a linearly shaded color, in place.

    Args:
        image: (H, W, 3) float32 image, 0-255.
        layer: what to paint.
        color: (3,) base BGR color.
        rng: draws the direction and strength of the shading.
        shading: the largest brightness change across the layer, as a fraction of ``color``;
            shading keeps flat colors from being a cue and imitates lighting.
        owner: optional (H, W) int map of the top-most layer at each pixel, updated in place so
            that the visible part of every object is known after occlusion.
        owner_id: the id written into ``owner``.
    """
    clipped = _clip(layer, *image.shape[:2])
    if clipped is None:
        return
    region, alpha = clipped
    h, w = layer.alpha.shape
    theta = rng.uniform(0.0, 2.0 * np.pi)
    strength = rng.uniform(0.0, shading) * 2.0 / max(h, w, 1)
    xs = np.arange(region[1].start, region[1].stop, dtype=np.float32) - (layer.x0 + w / 2.0)
    ys = np.arange(region[0].start, region[0].stop, dtype=np.float32) - (layer.y0 + h / 2.0)
    gain = 1.0 + strength * (xs[None, :] * math.cos(theta) + ys[:, None] * math.sin(theta))
    fill = np.minimum(color[None, None, :] * gain[..., None], np.float32(255.0))
    a = alpha[..., None].astype(np.float32) * np.float32(1.0 / 255.0)
    target = image[region]
    target += (fill - target) * a
    if owner is not None:
        owner[region][alpha >= _COVERED] = owner_id


def _hsv_color(
    rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]
) -> np.ndarray:
    """A BGR color (float32) of random hue with saturation and value drawn from the ranges."""
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.uint8
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _contrasting_color(
    rng: np.random.Generator, background: np.ndarray, min_contrast: float
) -> np.ndarray:
    """A random saturated color at least ``min_contrast`` (BGR distance) from ``background``.

    Without it some objects vanish into the background and their boxes become label noise. A few
    tries suffice; the last draw is kept if none qualifies, so the random stream stays fixed.
    """
    for _ in range(8):
        color = _hsv_color(rng, (0.2, 1.0), (0.25, 1.0))
        if np.linalg.norm(color - background) >= min_contrast:
            break
    return color


def _value_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] with about ``cells`` random values across the longer side."""
    gy = max(2, round(cells * height / max(height, width)) + 1)
    gx = max(2, round(cells * width / max(height, width)) + 1)
    grid = rng.random((gy, gx)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _mix(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c0 * (1.0 - t[..., None]) + c1 * t[..., None]


def _irregular_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """A star-convex polygon with strongly jittered radii: a blob that resembles no shape class."""
    n = int(rng.integers(7, 15))
    angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
    radii = radius * rng.uniform(0.4, 1.0, n)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """mini-COCO's backgrounds: noise, gradients, stripes or blobs, sometimes two blended."""

    def texture() -> np.ndarray:
        c0, c1 = rng.uniform(20, 235, (2, 3)).astype(np.float32)
        kind = rng.integers(4)
        if kind == 0:  # multi-scale noise
            octaves = ((0.4, 6), (0.35, 16), (0.25, 40))
            return _mix(c0, c1, sum(w * _value_noise(rng, height, width, c) for w, c in octaves))
        theta = rng.uniform(0.0, np.pi)
        along = np.arange(width, dtype=np.float32)[None, :] * math.cos(theta) + np.arange(
            height, dtype=np.float32
        )[:, None] * math.sin(theta)
        if kind == 1:  # gradient with low-frequency variation
            t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
            return _mix(c0, c1, 0.6 * t + 0.4 * _value_noise(rng, height, width, 32))
        if kind == 2:  # stripes of random period and softness
            period = rng.uniform(4.0, 24.0)
            wave = np.sin(along * 2.0 * np.pi / period + rng.uniform(0, 2 * np.pi))
            sharpness = rng.uniform(1.0, 6.0)
            return _mix(c0, c1, 0.5 + 0.5 * np.tanh(sharpness * wave) / np.tanh(sharpness))
        canvas = np.ascontiguousarray(np.broadcast_to(c0.astype(np.float32), (height, width, 3)))
        for _ in range(int(rng.integers(10, 40))):  # random blobs
            poly = _irregular_polygon(
                rng, rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, 0.25 * width)
            )
            color = np.clip(c0 + rng.normal(0, 30, 3), 0, 255)
            pts = np.round(poly * (1 << _SHIFT)).astype(np.int32)
            cv2.fillPoly(canvas, [pts], color.tolist(), lineType=cv2.LINE_AA, shift=_SHIFT)
        return cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 1.5))

    background = texture()
    if rng.random() < 0.5:
        weight = np.float32(rng.uniform(0.2, 0.5))
        background = background * (1.0 - weight) + texture() * weight
    # Fine grain on every texture keeps mini-COCO's backgrounds busy at the pixel level, unlike
    # mini-ImageNet's smooth ones.
    grain = rng.standard_normal((height, width), np.float32) * np.float32(rng.uniform(4.0, 14.0))
    return (background + cv2.GaussianBlur(grain, (0, 0), 0.7)[..., None]).astype(np.float32)


def _photographic_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """mini-ImageNet's backgrounds: smooth vignettes, horizons and large soft blobs.

    Low-frequency and softly colored, unlike mini-COCO's textures, so that the two datasets differ
    in style the way ImageNet's object photos differ from COCO's scenes.
    """

    def color() -> np.ndarray:
        return _hsv_color(rng, (0.05, 0.5), (0.35, 0.95))

    # Nothing here has detail finer than a few pixels, so it is drawn at a quarter of the size and
    # enlarged, which is several times faster than drawing (and blurring) at full size.
    h, w = -(-height // 4), -(-width // 4)
    ys = np.arange(h, dtype=np.float32)[:, None] / h
    xs = np.arange(w, dtype=np.float32)[None, :] / w
    aspect_y, aspect_x = h / max(h, w), w / max(h, w)
    kind = rng.integers(3)
    if kind == 0:  # vignette around an off-center light
        cx, cy = rng.uniform(0.3, 0.7, 2)
        dist = np.hypot((xs - cx) * aspect_x, (ys - cy) * aspect_y) / rng.uniform(0.5, 0.9)
        background = _mix(color(), color(), np.clip(dist, 0.0, 1.0) ** 1.5)
    elif kind == 1:  # sky over ground with a soft horizon
        rows = np.broadcast_to(ys, (h, w))
        sky, ground = _mix(color(), color(), rows), _mix(color(), color(), rows)
        t = 0.5 + 0.5 * np.tanh((rows - rng.uniform(0.35, 0.7)) * h / rng.uniform(0.3, 1.5))
        background = _mix(sky, ground, t)
    else:  # out-of-focus light blobs over a gradient
        theta = rng.uniform(0.0, 2.0 * np.pi)
        along = xs * aspect_x * math.cos(theta) + ys * aspect_y * math.sin(theta)
        background = _mix(color(), color(), (along - along.min()) / float(np.ptp(along)))
        side = max(h, w)
        for _ in range(int(rng.integers(3, 9))):
            blob = np.zeros((h, w), np.float32)
            center = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            axes = (int(rng.uniform(0.1, 0.35) * side), int(rng.uniform(0.1, 0.35) * side))
            cv2.ellipse(blob, center, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
            blob = cv2.GaussianBlur(blob, (0, 0), 0.08 * side) * np.float32(rng.uniform(0.2, 0.5))
            background = _mix(background, color(), blob)
    return cv2.resize(
        background.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )


def _finish(
    rng: np.random.Generator, image: np.ndarray, noise_std: float, max_blur_sigma: float
) -> np.ndarray:
    """Camera-like degradation (blur, then sensor noise) and conversion to uint8."""
    sigma = rng.uniform(0.0, max_blur_sigma) if max_blur_sigma > 0 else 0.0
    # Sigmas below ~0.3 px change nothing visible; skipping them saves time.
    if sigma >= 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    if noise_std > 0:
        image = image + rng.standard_normal(image.shape, np.float32) * np.float32(noise_std)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _image_size(
    rng: np.random.Generator, base: int, shapes: list[tuple[float, float]]
) -> tuple[int, int]:
    """A random (height, width) among ``shapes``, given as (width, height) multiples of ``base``."""
    fw, fh = shapes[int(rng.integers(len(shapes)))]
    return round(base * fh), round(base * fw)


def _write_jpeg(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"cv2.imwrite failed to write {path}")


def _shape_geometry(
    rng: np.random.Generator, name: str, area_size: float, short: int, max_stretch: float
) -> tuple[float, float, float]:
    """(size, stretch, radius) of a shape of class ``name`` covering about ``area_size``**2 px.

    Sparse shapes (star, crescent) need a larger box for the same area; the cap keeps the box
    within about the image, since a shape cropped far beyond recognition is noise.
    """
    size = min(area_size / math.sqrt(_FILL_RATIO[name]), short)
    stretch = math.exp(rng.uniform(-1.0, 1.0) * math.log(max_stretch))
    radius = 0.5 * size * max(math.sqrt(stretch), 1.0 / math.sqrt(stretch))
    return size, stretch, radius
