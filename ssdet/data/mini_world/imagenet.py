"""mini-ImageNet's object-centric images, in its two relations to mini-COCO (the ``"coco"``
domain and the ``"shifted"`` stress-test domain), with their ground-truth boxes."""

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ssdet.data.builtin_meta import MINI_COCO_CLASSES, MINI_IMAGENET_CLASSES
from ssdet.data.mini_world.coco import (
    _paint_scene,
    _place,
    _visible_boxes,
)
from ssdet.data.mini_world.render import (
    _DATASET_KEYS,
    _IMAGENET_SHAPES,
    _clip,
    _composite,
    _finish,
    _hsv_color,
    _image_size,
    _Layer,
    _photographic_background,
    _render_shape,
    _shape_geometry,
    _textured_background,
    _write_jpeg,
)


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
