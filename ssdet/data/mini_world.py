"""The mini world: a deterministic, CPU-sized stand-in for COCO and ImageNet.

The paper self-trains a COCO detector on pseudo-labeled ImageNet. The mini world mirrors both:

* **mini-COCO** (labeled detection): scenes of 1-3 shapes of 10 classes on textured backgrounds,
  with occasional occlusion and distractors and sizes from a quarter to most of the image's
  shorter side, written as JPEG files plus COCO-format annotation files. The defaults are tuned so
  that the mini detector trained from scratch for a few CPU minutes lands in the 20-60 AP band
  (harder worlds left a Rand Init detector below 10 AP in that budget; every knob is an option).
* **mini-ImageNet** (unlabeled, object-centric): one dominant, roughly centered shape per image,
  sometimes with 1-2 smaller others, in ImageNet's ``<split>/<class>/`` folder layout, with 4
  classes that never occur in mini-COCO as a minority. By default it shares mini-COCO's visual
  world (backgrounds, colors, noise, object sizes), as ImageNet shares COCO's photographs; the
  ``"shifted"`` domain keeps a far style (smooth photographic backgrounds, shadows, blur) for
  stress tests. Its ground truth is written as a side file that training never reads, so that the
  teacher's pseudo labels can be scored.

A shape's class is decided by its outline alone; color, shading, rotation and stretch are random,
so a detector must learn shape. Every image has its own random generator seeded from
``(seed, dataset, split, index)``, which makes the files byte-identical for the same seed and
options however many worker processes render them.

This module needs only numpy, cv2 and the standard library so that importing it stays cheap.
"""

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ssdet.data.builtin_meta import MINI_COCO_CLASSES, MINI_IMAGENET_CLASSES
from ssdet.utils.io import atomic_write_json

__all__ = [
    "GENERATOR_VERSION",
    "GROUND_TRUTH_DIR",
    "IMAGENET_DOMAINS",
    "MINI_COCO_CLASSES",
    "MINI_IMAGENET_CLASSES",
    "generate_mini_coco",
    "generate_mini_imagenet",
    "generate_mini_world",
    "images_per_class",
]

# Bump whenever a change alters the generated files, so that existing worlds are regenerated.
GENERATOR_VERSION = 3


JPEG_QUALITY = 90
MARKER_FILE = "world.json"
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

# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Colors and backgrounds
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# mini-COCO
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CocoStyle:
    """The knobs of :func:`generate_mini_coco` that shape each scene (documented there)."""

    image_size: int
    objects_per_image: tuple[int, int]
    object_size: tuple[float, float]
    max_stretch: float
    occlusion: float
    clutter_per_image: tuple[int, int]
    min_contrast: float
    noise_std: float
    max_blur_sigma: float
    min_visible: float
    min_visible_size: int


def _place(
    rng: np.random.Generator,
    radius: float,
    height: int,
    width: int,
    placed: list[tuple[float, float, float]],
    occlusion: float,
) -> tuple[float, float]:
    """Choose an object center: next to an earlier object (to occlude it) or in free space.

    Centers may sit near the border so that some objects are cut off by it, as in photos.
    """
    if placed and rng.random() < occlusion:
        px, py, pr = placed[int(rng.integers(len(placed)))]
        theta = rng.uniform(0.0, 2.0 * np.pi)
        # Distances below the sum of radii overlap; the range runs from heavy to light overlap.
        dist = (pr + radius) * rng.uniform(0.35, 0.9)
        return px + dist * math.cos(theta), py + dist * math.sin(theta)
    lo_x, hi_x = min(0.6 * radius, width / 2), max(width - 0.6 * radius, width / 2)
    lo_y, hi_y = min(0.6 * radius, height / 2), max(height - 0.6 * radius, height / 2)
    candidates = np.stack([rng.uniform(lo_x, hi_x, 8), rng.uniform(lo_y, hi_y, 8)], axis=1)
    if not placed:
        return tuple(candidates[0])
    # The candidate whose worst overlap (sum of radii minus distance) with earlier objects is least.
    others = np.asarray(placed)
    gaps = np.hypot(
        candidates[:, None, 0] - others[None, :, 0], candidates[:, None, 1] - others[None, :, 1]
    ) - (others[None, :, 2] + radius)
    return tuple(candidates[int(np.argmax(gaps.min(axis=1)))])


def _distractor(rng: np.random.Generator, height: int, width: int) -> _Layer:
    """Clutter that is no object of any class: thin lines, scribbles and irregular blobs."""
    alpha = np.zeros((height, width), np.uint8)
    kind = rng.integers(3)
    if kind == 0:
        p0 = rng.uniform(0, 1, 2) * (width, height)
        p1 = p0 + rng.uniform(-0.8, 0.8, 2) * (width, height)
        pts = np.round(np.stack([p0, p1]) * (1 << _SHIFT)).astype(np.int32)
        cv2.polylines(alpha, [pts], False, 255, int(rng.integers(1, 4)), cv2.LINE_AA, _SHIFT)
    elif kind == 1:
        steps = rng.normal(0, 0.08 * max(height, width), (int(rng.integers(4, 10)), 2))
        walk = np.cumsum(steps, axis=0) + rng.uniform(0, 1, 2) * (width, height)
        pts = np.round(walk * (1 << _SHIFT)).astype(np.int32)
        cv2.polylines(alpha, [pts], False, 255, int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
    else:
        poly = _irregular_polygon(
            rng,
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(0.03, 0.2) * min(height, width),
        )
        _fill_polygons(alpha, [poly], 255)
    # Crop to the drawn pixels: compositing then touches only the distractor's own region.
    x, y, w, h = cv2.boundingRect(alpha)
    return _Layer(x, y, alpha[y : y + h, x : x + w])


def _paint_scene(
    rng: np.random.Generator,
    image: np.ndarray,
    owner: np.ndarray,
    objects: list[tuple[int, float, float, float, _Layer]],
    num_clutter: int,
    min_contrast: float,
) -> None:
    """Paint objects back to front, with ``num_clutter`` distractors at random depths, in place.

    Args:
        rng: the image's generator.
        image: (H, W, 3) float32 background, painted over.
        owner: (H, W) int map of the top-most object (index into ``objects``) at each pixel;
            distractors write -2.
        objects: ``(label, cx, cy, radius, layer)`` from back to front.
        num_clutter: distractors to add.
        min_contrast: least BGR distance between an object's color and the image under it.
    """
    height, width = image.shape[:2]
    num_objects = len(objects)
    # Clutter goes in at random depths: some behind objects, some over them (partly occluding).
    depths = rng.integers(0, num_objects + 1, num_clutter)
    clutter = [(int(d), _distractor(rng, height, width)) for d in depths]
    for depth in range(num_objects + 1):
        for d, layer in clutter:
            if d == depth:
                color = _hsv_color(rng, (0.0, 1.0), (0.1, 1.0))
                _composite(image, layer, color, rng, 0.2, owner, owner_id=-2)
        if depth < num_objects:
            label, cx, cy, radius, layer = objects[depth]
            r = max(int(radius), 1)
            y, x = int(np.clip(cy, 0, height - 1)), int(np.clip(cx, 0, width - 1))
            under = image[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].mean(axis=(0, 1))
            color = _contrasting_color(rng, under, min_contrast)
            _composite(image, layer, color, rng, 0.35, owner, owner_id=depth)


def _visible_boxes(
    objects: list[tuple[int, float, float, float, _Layer]],
    owner: np.ndarray,
    min_visible: float,
    min_visible_size: int,
) -> list[dict[str, Any]]:
    """COCO annotations (without ids) of the objects visible enough after occlusion.

    ``category_id`` is the object's label + 1; ``bbox`` (XYWH) is tight around the visible pixels
    and ``area`` counts them. Objects less than ``min_visible`` visible or with a visible box
    narrower than ``min_visible_size`` pixels are left out, as a labeler would leave them.
    """
    height, width = owner.shape
    annotations = []
    for index, (label, _, _, _, layer) in enumerate(objects):
        full_area = int(np.count_nonzero(layer.alpha >= _COVERED))
        clipped = _clip(layer, height, width)
        if clipped is None:
            continue
        # An object's visible pixels lie inside its own layer, so only that region is searched.
        region = clipped[0]
        ys, xs = np.nonzero(owner[region] == index)
        if len(xs) == 0 or len(xs) < min_visible * full_area:
            continue
        xs, ys = xs + region[1].start, ys + region[0].start
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
        w, h = x1 - x0 + 1, y1 - y0 + 1
        if min(w, h) < min_visible_size:
            continue
        annotations.append(
            {"category_id": label + 1, "bbox": [x0, y0, w, h], "area": int(len(xs)), "iscrowd": 0}
        )
    return annotations


def _render_coco_image(
    rng: np.random.Generator, style: _CocoStyle
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one mini-COCO scene.

    Returns:
        The (H, W, 3) uint8 BGR image and its annotations without ids: ``category_id`` (1-based
        index into :data:`MINI_COCO_CLASSES`), ``bbox`` (XYWH, tight around the visible pixels)
        and ``area`` (the number of visible pixels).
    """
    height, width = _image_size(rng, style.image_size, _COCO_SHAPES)
    short = min(height, width)
    image = _textured_background(rng, height, width)
    owner = np.full((height, width), -1, np.int16)

    num_objects = int(rng.integers(style.objects_per_image[0], style.objects_per_image[1] + 1))
    lo, hi = style.object_size
    # Log-uniform sizes (square roots of areas) spread objects over COCO's small, medium and large.
    sizes = np.exp(rng.uniform(math.log(lo * short), math.log(hi * short), num_objects))
    labels = rng.integers(len(MINI_COCO_CLASSES), size=num_objects)
    # Larger objects first (further back), so that occlusion mostly hides parts, not whole objects.
    order = np.argsort(-sizes, kind="stable")
    objects = []
    for label, area_size in zip(labels[order].tolist(), sizes[order].tolist(), strict=True):
        size, stretch, radius = _shape_geometry(
            rng, MINI_COCO_CLASSES[label], area_size, short, style.max_stretch
        )
        cx, cy = _place(rng, radius, height, width, [o[1:4] for o in objects], style.occlusion)
        layer = _render_shape(
            MINI_COCO_CLASSES[label], cx, cy, size, stretch, rng.uniform(0, 2 * np.pi)
        )
        objects.append((label, cx, cy, radius, layer))

    num_clutter = int(rng.integers(style.clutter_per_image[0], style.clutter_per_image[1] + 1))
    _paint_scene(rng, image, owner, objects, num_clutter, style.min_contrast)
    annotations = _visible_boxes(objects, owner, style.min_visible, style.min_visible_size)
    return _finish(rng, image, style.noise_std, style.max_blur_sigma), annotations


def _coco_job(job: tuple[str, int, int, int, _CocoStyle]) -> tuple[int, int, list[dict]]:
    """Render and write one scene; returns (height, width, annotations) for the JSON file."""
    path, seed, split_key, index, style = job
    rng = np.random.default_rng([seed, _DATASET_KEYS["mini_coco"], split_key, index])
    image, annotations = _render_coco_image(rng, style)
    _write_jpeg(path, image)
    return image.shape[0], image.shape[1], annotations


# ----------------------------------------------------------------------------------------------
# mini-ImageNet
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImagenetStyle:
    """The knobs of :func:`generate_mini_imagenet` that shape each image (documented there)."""

    domain: str
    image_size: int
    object_size: tuple[float, float]
    max_stretch: float
    secondary_prob: float
    secondary_size: tuple[float, float]
    clutter_per_image: tuple[int, int]
    min_contrast: float
    noise_std: float
    max_blur_sigma: float
    novel_fraction: float


# The two relations of mini-ImageNet to mini-COCO (``generate_mini_imagenet(domain=...)``).
# "coco": ImageNet's relation to COCO. The same visual world as mini-COCO (its textured
# backgrounds, colors, contrast, camera noise and blur, image size and an overlapping object-size
# range), but object-centric, and novel classes a minority. "shifted": a much harder domain shift
# for stress tests (the generator's only domain before version 3): smooth photographic
# backgrounds, drop shadows, strong lighting and blur, 128 px images, objects up to 90% of the
# side, and the 4 novel classes as frequent as the others.
IMAGENET_DOMAINS: dict[str, dict[str, Any]] = {
    "coco": {
        "image_size": 160,
        "object_size": (0.25, 0.6),
        "max_stretch": 1.25,
        "secondary_prob": 0.3,
        "secondary_size": (0.15, 0.4),
        "clutter_per_image": (0, 1),
        "min_contrast": 90.0,
        "noise_std": 3.0,
        "max_blur_sigma": 0.3,
        "novel_fraction": 0.1,
    },
    "shifted": {
        "image_size": 128,
        "object_size": (0.35, 0.9),
        "max_stretch": 1.4,
        "secondary_prob": 0.15,
        "secondary_size": (0.1, 0.25),
        "clutter_per_image": (0, 0),
        "min_contrast": 0.0,
        "noise_std": 3.0,
        "max_blur_sigma": 1.0,
        "novel_fraction": 4 / 14,
    },
}
# Objects of mini-ImageNet's ground truth: as visible as mini-COCO's annotated ones must be.
_IMAGENET_MIN_VISIBLE = 0.3
_IMAGENET_MIN_VISIBLE_SIZE = 4
# In the "coco" domain a secondary object is at most this fraction of the dominant one's size.
_SECONDARY_MAX_RELATIVE_SIZE = 0.6


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


def _render_imagenet_coco_domain(
    rng: np.random.Generator, label: int, style: _ImagenetStyle
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """An object-centric image in mini-COCO's visual world (the ``"coco"`` domain).

    One dominant object of class ``label``, roughly centered and in front; with probability
    ``secondary_prob`` 1-2 smaller objects placed around it (mini-COCO classes, novel ones at
    ``novel_fraction``), and mini-COCO's distractors.
    """
    height, width = _image_size(rng, style.image_size, _IMAGENET_SHAPES)
    short = min(height, width)
    image = _textured_background(rng, height, width)
    owner = np.full((height, width), -1, np.int16)

    lo, hi = style.object_size
    name = MINI_IMAGENET_CLASSES[label]
    area_size = math.exp(rng.uniform(math.log(lo * short), math.log(hi * short)))
    size, stretch, radius = _shape_geometry(rng, name, area_size, short, style.max_stretch)
    cx = width / 2.0 + rng.uniform(-0.1, 0.1) * width
    cy = height / 2.0 + rng.uniform(-0.1, 0.1) * height
    dominant = (
        label,
        cx,
        cy,
        radius,
        _render_shape(name, cx, cy, size, stretch, rng.uniform(0, 2 * np.pi)),
    )

    secondaries = []
    if rng.random() < style.secondary_prob:
        num_known = len(MINI_COCO_CLASSES)
        for _ in range(int(rng.integers(1, 3))):
            if rng.random() < style.novel_fraction:
                other = num_known + int(rng.integers(len(MINI_IMAGENET_CLASSES) - num_known))
            else:
                other = int(rng.integers(num_known))
            other_name = MINI_IMAGENET_CLASSES[other]
            s_lo, s_hi = style.secondary_size
            o_area = math.exp(rng.uniform(math.log(s_lo * short), math.log(s_hi * short)))
            # Never as large as the dominant object: the image stays about one object.
            o_area = min(o_area, _SECONDARY_MAX_RELATIVE_SIZE * area_size)
            o_size, o_stretch, o_radius = _shape_geometry(
                rng, other_name, o_area, short, style.max_stretch
            )
            placed = [dominant[1:4], *(o[1:4] for o in secondaries)]
            # Around the dominant object, never on top of it (occlusion 0): it stays dominant.
            ox, oy = _place(rng, o_radius, height, width, placed, 0.0)
            layer = _render_shape(other_name, ox, oy, o_size, o_stretch, rng.uniform(0, 2 * np.pi))
            secondaries.append((other, ox, oy, o_radius, layer))

    # Back to front: the secondary objects behind, the dominant object in front.
    objects = [*secondaries, dominant]
    num_clutter = int(rng.integers(style.clutter_per_image[0], style.clutter_per_image[1] + 1))
    _paint_scene(rng, image, owner, objects, num_clutter, style.min_contrast)
    annotations = _visible_boxes(objects, owner, _IMAGENET_MIN_VISIBLE, _IMAGENET_MIN_VISIBLE_SIZE)
    return _finish(rng, image, style.noise_std, style.max_blur_sigma), annotations


def _render_imagenet_shifted(
    rng: np.random.Generator, label: int, style: _ImagenetStyle
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """An object-centric image in a photographic style far from mini-COCO's (``"shifted"``)."""
    height, width = _image_size(rng, style.image_size, _IMAGENET_SHAPES)
    short = min(height, width)
    image = _photographic_background(rng, height, width)
    owner = np.full((height, width), -1, np.int16)
    objects: list[tuple[int, float, float, float, _Layer]] = []

    def draw(index: int, cx: float, cy: float, size: float) -> None:
        stretch = math.exp(rng.uniform(-1.0, 1.0) * math.log(style.max_stretch))
        layer = _render_shape(
            MINI_IMAGENET_CLASSES[index], cx, cy, size, stretch, rng.uniform(0, 2 * np.pi)
        )
        # A soft drop shadow and strong lighting make the objects look photographed.
        shadow = cv2.GaussianBlur(layer.alpha.astype(np.float32), (0, 0), max(size * 0.05, 1.0))
        offset = rng.uniform(0.02, 0.06, 2) * size
        shifted = _Layer(layer.x0 + int(offset[0]), layer.y0 + int(offset[1]), shadow)
        clipped = _clip(shifted, height, width)
        if clipped is not None:
            region, a = clipped
            image[region] *= 1.0 - rng.uniform(0.3, 0.6) * (a[..., None] / 255.0)
        color = _hsv_color(rng, (0.35, 1.0), (0.3, 1.0))
        _composite(image, layer, color, rng, 0.5, owner, owner_id=len(objects))
        objects.append((index, cx, cy, 0.5 * size, layer))

    if rng.random() < style.secondary_prob:
        for _ in range(int(rng.integers(1, 3))):
            index = int(rng.integers(len(MINI_IMAGENET_CLASSES)))
            s_lo, s_hi = style.secondary_size
            draw(
                index,
                rng.uniform(0, width),
                rng.uniform(0, height),
                rng.uniform(s_lo, s_hi) * short,
            )
    lo, hi = style.object_size
    cx = width / 2.0 + rng.uniform(-0.1, 0.1) * width
    cy = height / 2.0 + rng.uniform(-0.1, 0.1) * height
    draw(label, cx, cy, rng.uniform(lo, hi) * short)
    annotations = _visible_boxes(objects, owner, _IMAGENET_MIN_VISIBLE, _IMAGENET_MIN_VISIBLE_SIZE)
    return _finish(rng, image, style.noise_std, style.max_blur_sigma), annotations


def _render_imagenet_image(
    rng: np.random.Generator, label: int, style: _ImagenetStyle
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one object-centric image whose dominant object has class ``label``.

    Returns:
        The (H, W, 3) uint8 BGR image and its ground truth, COCO annotations without ids whose
        ``category_id`` is the 1-based index into :data:`MINI_IMAGENET_CLASSES`.
    """
    if style.domain == "coco":
        return _render_imagenet_coco_domain(rng, label, style)
    return _render_imagenet_shifted(rng, label, style)


def _imagenet_job(
    job: tuple[str, int, int, int, int, _ImagenetStyle],
) -> tuple[int, int, list[dict[str, Any]]]:
    """Render and write one image; returns (height, width, ground truth) for the side file."""
    path, seed, split_key, label, index, style = job
    key = [seed, _DATASET_KEYS["mini_imagenet"], split_key, label, index]
    image, annotations = _render_imagenet_image(np.random.default_rng(key), label, style)
    _write_jpeg(path, image)
    return image.shape[0], image.shape[1], annotations


def images_per_class(per_class: int, novel_fraction: float) -> dict[str, int]:
    """Images per mini-ImageNet class: ``per_class`` for the mini-COCO classes, and for the novel
    ones as many as make ``novel_fraction`` of all images (rounded per class)."""
    num_known = len(MINI_COCO_CLASSES)
    num_novel = len(MINI_IMAGENET_CLASSES) - num_known
    novel = round(per_class * num_known * novel_fraction / (num_novel * (1.0 - novel_fraction)))
    return {
        name: per_class if i < num_known else novel for i, name in enumerate(MINI_IMAGENET_CLASSES)
    }


# ----------------------------------------------------------------------------------------------
# Generation, markers and the public API
# ----------------------------------------------------------------------------------------------


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if not (low <= value[0] <= value[1] <= high):
        raise ValueError(
            f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {value}"
        )


def _marker(dataset: str, seed: int, options: Mapping[str, Any]) -> dict[str, Any]:
    # A JSON round trip turns tuples into lists, so a requested marker equals a loaded one.
    return json.loads(
        json.dumps(
            {
                "dataset": dataset,
                "generator_version": GENERATOR_VERSION,
                "seed": seed,
                "options": dict(options),
            }
        )
    )


def _is_current(directory: str, marker: dict[str, Any]) -> bool:
    try:
        with open(os.path.join(directory, MARKER_FILE)) as f:
            return json.load(f) == marker
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _cv2_single_threaded() -> Iterator[None]:
    """Run cv2 without its thread pool in this process while the block runs.

    Forked workers inherit cv2's thread pool in whatever state the parent's threads left it, and
    resizing it in a worker can deadlock; workers forked inside this block find a pool of one
    thread, which cv2 never uses. One thread per worker is also right: the pool uses the cores.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _run(fn: Callable, jobs: list, num_workers: int, desc: str) -> list:
    """Map ``fn`` over ``jobs`` in order, in a process pool when ``num_workers`` > 1."""
    if num_workers > 1 and len(jobs) > 1:
        with _cv2_single_threaded(), multiprocessing.Pool(num_workers) as pool:
            results = pool.imap(fn, jobs, chunksize=16)
            return list(tqdm(results, total=len(jobs), desc=desc, unit="img"))
    return [fn(job) for job in tqdm(jobs, desc=desc, unit="img")]


def _prepare(directory: str, marker: dict[str, Any], force: bool) -> bool:
    """Whether ``directory`` must be generated; if so, remove whatever is there (partial output)."""
    if not force and _is_current(directory, marker):
        print(f"{marker['dataset']} (seed {marker['seed']}) is already present in {directory}")
        return False
    if os.path.exists(directory):
        shutil.rmtree(directory)
    return True


def generate_mini_coco(
    root: str,
    *,
    num_train: int = 1500,
    num_val: int = 300,
    seed: int = 0,
    image_size: int = 160,
    objects_per_image: tuple[int, int] = (1, 3),
    object_size: tuple[float, float] = (0.25, 0.7),
    max_stretch: float = 1.25,
    occlusion: float = 0.05,
    clutter_per_image: tuple[int, int] = (0, 1),
    min_contrast: float = 90.0,
    noise_std: float = 3.0,
    max_blur_sigma: float = 0.3,
    min_visible: float = 0.3,
    min_visible_size: int = 4,
    num_workers: int = 2,
    force: bool = False,
) -> str:
    """Generate mini-COCO under ``<root>/mini_coco`` unless it is already there.

    Layout: ``train/*.jpg``, ``val/*.jpg`` and ``annotations/instances_{train,val}.json`` in COCO
    format (``file_name`` relative to the split's image folder; categories 1-10 in the order of
    :data:`MINI_COCO_CLASSES`), then ``world.json``, the marker recording the version, seed and
    options. A marker matching the request makes this a no-op; a missing or different one makes
    it delete the folder and generate it again.

    Args:
        root: the datasets folder (usually ``$DETECTRON2_DATASETS``).
        num_train: number of training scenes.
        num_val: number of validation scenes.
        seed: the world's seed; the same seed and options give byte-identical files.
        image_size: base image side in pixels; images are base x (1, 0.75), (0.75, 1), (1, 1) or
            (1.2, 0.9) (width x height).
        objects_per_image: inclusive range of objects drawn per scene (before dropping hidden ones).
        object_size: (min, max) object size as fractions of the image's shorter side, sampled
            log-uniformly. Size is the square root of the object's area (before occlusion and
            cropping by the border), the measure of COCO's small/medium/large. Sparse shapes
            (star, crescent) are capped at a box about the shorter side, so they reach less area.
        max_stretch: largest aspect-ratio distortion of a shape (1 disables stretching).
        occlusion: probability that an object is placed overlapping an earlier one.
        clutter_per_image: inclusive range of distractors (lines, scribbles, irregular blobs).
        min_contrast: least BGR distance between an object's color and the background under it.
        noise_std: standard deviation of the Gaussian pixel noise (0-255 scale).
        max_blur_sigma: per-image Gaussian blur sigma is uniform in [0, max_blur_sigma] pixels.
        min_visible: objects with less than this fraction of their pixels visible are not annotated.
        min_visible_size: objects whose visible box is narrower than this (pixels) are not
            annotated.
        num_workers: processes that render images; 0 or 1 renders in this process. The output
            does not depend on it.
        force: regenerate even if a matching marker is present.

    Returns:
        The dataset folder, ``<root>/mini_coco``.
    """
    _check_range("objects_per_image", objects_per_image, 0, math.inf)
    _check_range("object_size", object_size, 1e-3, 2.0)
    _check_range("clutter_per_image", clutter_per_image, 0, math.inf)
    if max_stretch < 1.0:
        raise ValueError(f"max_stretch must be >= 1, got {max_stretch}")
    style = _CocoStyle(
        image_size=image_size,
        objects_per_image=tuple(objects_per_image),
        object_size=tuple(object_size),
        max_stretch=max_stretch,
        occlusion=occlusion,
        clutter_per_image=tuple(clutter_per_image),
        min_contrast=min_contrast,
        noise_std=noise_std,
        max_blur_sigma=max_blur_sigma,
        min_visible=min_visible,
        min_visible_size=min_visible_size,
    )
    directory = os.path.join(root, "mini_coco")
    options = {"num_train": num_train, "num_val": num_val, **dataclasses.asdict(style)}
    marker = _marker("mini_coco", seed, options)
    if not _prepare(directory, marker, force):
        return directory

    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(MINI_COCO_CLASSES)
    ]
    for split, count in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(directory, split))
        names = [f"{index:06d}.jpg" for index in range(count)]
        jobs = [
            (os.path.join(directory, split, name), seed, _SPLIT_KEYS[split], index, style)
            for index, name in enumerate(names)
        ]
        results = _run(_coco_job, jobs, num_workers, desc=f"mini_coco {split}")
        images, annotations = [], []
        for index, (name, (height, width, anns)) in enumerate(zip(names, results, strict=True)):
            images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})
        atomic_write_json(
            os.path.join(directory, "annotations", f"instances_{split}.json"),
            {"images": images, "annotations": annotations, "categories": categories},
            indent=None,
        )
    atomic_write_json(os.path.join(directory, MARKER_FILE), marker)
    return directory


def generate_mini_imagenet(
    root: str,
    *,
    train_per_class: int = 300,
    val_per_class: int = 30,
    seed: int = 0,
    domain: str = "coco",
    image_size: int | None = None,
    object_size: tuple[float, float] | None = None,
    max_stretch: float | None = None,
    secondary_prob: float | None = None,
    secondary_size: tuple[float, float] | None = None,
    clutter_per_image: tuple[int, int] | None = None,
    min_contrast: float | None = None,
    noise_std: float | None = None,
    max_blur_sigma: float | None = None,
    novel_fraction: float | None = None,
    num_workers: int = 2,
    force: bool = False,
) -> str:
    """Generate mini-ImageNet under ``<root>/mini_imagenet`` unless it is already there.

    Layout: ``{train,val}/<class>/<class>_<index>.jpg`` for every class of
    :data:`MINI_IMAGENET_CLASSES`; the ground truth ``annotations/instances_{train,val}.json``
    (COCO format, ``file_name`` relative to the split's folder, ``category_id`` the 1-based index
    into :data:`MINI_IMAGENET_CLASSES`, boxes tight around the visible pixels as in mini-COCO), a
    side file that training never reads (the folders are unlabeled data; the pseudo-label report
    measures the teacher's precision and recall with it); then the marker ``world.json`` (see
    :func:`generate_mini_coco` for how the marker makes generation a no-op or a clean
    regeneration).

    Every style knob left None takes the value of ``domain`` in :data:`IMAGENET_DOMAINS`.

    Args:
        root: the datasets folder (usually ``$DETECTRON2_DATASETS``).
        train_per_class: training images per mini-COCO class (novel classes: see
            ``novel_fraction``).
        val_per_class: validation images per mini-COCO class.
        seed: the world's seed; the same seed and options give byte-identical files.
        domain: ``"coco"`` (the default: mini-COCO's visual world, as ImageNet relates to COCO)
            or ``"shifted"`` (a far domain, for stress tests); see :data:`IMAGENET_DOMAINS`.
        image_size: base image side in pixels; images are base x (1, 1), (1.125, 0.875),
            (0.875, 1.125) or (1, 0.75) (width x height).
        object_size: (min, max) size of the dominant object as fractions of the shorter side.
            "coco": log-uniform square root of the area, as mini-COCO's; "shifted": uniform
            geometric-mean side of the unrotated box.
        max_stretch: largest aspect-ratio distortion of a shape (1 disables stretching).
        secondary_prob: probability of 1-2 smaller secondary objects behind the dominant one.
        secondary_size: (min, max) size of a secondary object, as ``object_size``; in "coco" it
            is also at most 0.6 of the dominant object's.
        clutter_per_image: inclusive range of mini-COCO's distractors ("coco" only).
        min_contrast: least BGR distance between an object's color and the background under it
            ("coco" only).
        noise_std: standard deviation of the Gaussian pixel noise (0-255 scale).
        max_blur_sigma: per-image Gaussian blur sigma is uniform in [0, max_blur_sigma] pixels.
        novel_fraction: the fraction of images whose dominant object has a class mini-COCO lacks
            (each novel class gets the same number, :func:`images_per_class`), and in "coco"
            the chance that a secondary object is of a novel class.
        num_workers: processes that render images; 0 or 1 renders in this process.
        force: regenerate even if a matching marker is present.

    Returns:
        The dataset folder, ``<root>/mini_imagenet``.
    """
    if domain not in IMAGENET_DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(IMAGENET_DOMAINS)}, got {domain!r}")
    given = {
        "image_size": image_size,
        "object_size": object_size,
        "max_stretch": max_stretch,
        "secondary_prob": secondary_prob,
        "secondary_size": secondary_size,
        "clutter_per_image": clutter_per_image,
        "min_contrast": min_contrast,
        "noise_std": noise_std,
        "max_blur_sigma": max_blur_sigma,
        "novel_fraction": novel_fraction,
    }
    knobs = {k: (IMAGENET_DOMAINS[domain][k] if v is None else v) for k, v in given.items()}
    for key in ("object_size", "secondary_size", "clutter_per_image"):
        knobs[key] = tuple(knobs[key])
    _check_range("object_size", knobs["object_size"], 1e-3, 2.0)
    _check_range("secondary_size", knobs["secondary_size"], 1e-3, 2.0)
    _check_range("clutter_per_image", knobs["clutter_per_image"], 0, math.inf)
    if knobs["max_stretch"] < 1.0:
        raise ValueError(f"max_stretch must be >= 1, got {knobs['max_stretch']}")
    if not 0.0 <= knobs["novel_fraction"] < 1.0:
        raise ValueError(f"novel_fraction must be in [0, 1), got {knobs['novel_fraction']}")
    style = _ImagenetStyle(domain=domain, **knobs)
    directory = os.path.join(root, "mini_imagenet")
    options = {
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        **dataclasses.asdict(style),
    }
    marker = _marker("mini_imagenet", seed, options)
    if not _prepare(directory, marker, force):
        return directory

    categories = [{"id": i + 1, "name": name} for i, name in enumerate(MINI_IMAGENET_CLASSES)]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        jobs, names = [], []
        counts = images_per_class(per_class, style.novel_fraction)
        for label, name in enumerate(MINI_IMAGENET_CLASSES):
            os.makedirs(os.path.join(directory, split, name))
            for index in range(counts[name]):
                file_name = f"{name}/{name}_{index:06d}.jpg"
                names.append(file_name)
                path = os.path.join(directory, split, file_name)
                jobs.append((path, seed, _SPLIT_KEYS[split], label, index, style))
        results = _run(_imagenet_job, jobs, num_workers, desc=f"mini_imagenet {split}")
        images, annotations = [], []
        for index, (name, (height, width, anns)) in enumerate(zip(names, results, strict=True)):
            images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})
        atomic_write_json(
            os.path.join(directory, GROUND_TRUTH_DIR, f"instances_{split}.json"),
            {"images": images, "annotations": annotations, "categories": categories},
            indent=None,
        )
    atomic_write_json(os.path.join(directory, MARKER_FILE), marker)
    return directory


# The tiny world for unit tests: a few dozen small images, generated in about a second.
_TINY_COCO = {"num_train": 24, "num_val": 8, "image_size": 64}
_TINY_IMAGENET = {"train_per_class": 6, "val_per_class": 2, "image_size": 48}


def generate_mini_world(
    root: str,
    *,
    seed: int = 0,
    tiny: bool = False,
    num_train: int | None = None,
    num_val: int | None = None,
    imagenet_train_per_class: int | None = None,
    imagenet_val_per_class: int | None = None,
    coco_options: Mapping[str, Any] | None = None,
    imagenet_options: Mapping[str, Any] | None = None,
    num_workers: int = 2,
    force: bool = False,
) -> dict[str, str]:
    """Generate mini-COCO and mini-ImageNet under ``root``, skipping what is already there.

    Args:
        root: the datasets folder (usually ``$DETECTRON2_DATASETS``).
        seed: the world's seed, shared by both datasets.
        tiny: a very small world for unit tests (24/8 scenes at 64 px; 6/2 images per class at
            48 px). Explicit sizes and options below override it.
        num_train: mini-COCO training scenes (default: :func:`generate_mini_coco`'s).
        num_val: mini-COCO validation scenes.
        imagenet_train_per_class: mini-ImageNet training images per class.
        imagenet_val_per_class: mini-ImageNet validation images per class.
        coco_options: further keyword arguments of :func:`generate_mini_coco` (difficulty knobs).
        imagenet_options: further keyword arguments of :func:`generate_mini_imagenet`.
        num_workers: processes that render images; 0 or 1 renders in this process.
        force: regenerate both datasets even if present.

    Returns:
        ``{"mini_coco": <dir>, "mini_imagenet": <dir>}``.
    """
    coco = {
        **(_TINY_COCO if tiny else {}),
        **(coco_options or {}),
        **{k: v for k, v in (("num_train", num_train), ("num_val", num_val)) if v is not None},
    }
    imagenet = {
        **(_TINY_IMAGENET if tiny else {}),
        **(imagenet_options or {}),
        **{
            k: v
            for k, v in (
                ("train_per_class", imagenet_train_per_class),
                ("val_per_class", imagenet_val_per_class),
            )
            if v is not None
        },
    }
    return {
        "mini_coco": generate_mini_coco(
            root, seed=seed, num_workers=num_workers, force=force, **coco
        ),
        "mini_imagenet": generate_mini_imagenet(
            root, seed=seed, num_workers=num_workers, force=force, **imagenet
        ),
    }
