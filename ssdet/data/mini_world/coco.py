"""mini-COCO's scenes: 1-3 shapes on textured backgrounds, with occlusion and distractors, and
their COCO-format boxes."""

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ssdet.data.builtin_meta import MINI_COCO_CLASSES
from ssdet.data.mini_world.render import (
    _COCO_SHAPES,
    _COVERED,
    _DATASET_KEYS,
    _SHIFT,
    _clip,
    _composite,
    _contrasting_color,
    _fill_polygons,
    _finish,
    _hsv_color,
    _image_size,
    _irregular_polygon,
    _Layer,
    _render_shape,
    _shape_geometry,
    _textured_background,
    _write_jpeg,
)


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
