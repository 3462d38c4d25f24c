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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import cv2
from tqdm import tqdm

from ssdet.data.builtin_meta import MINI_COCO_CLASSES, MINI_IMAGENET_CLASSES
from ssdet.data.mini_world.coco import (
    _coco_job,
    _CocoStyle,
)
from ssdet.data.mini_world.imagenet import (
    IMAGENET_DOMAINS,
    _imagenet_job,
    _ImagenetStyle,
    images_per_class,
)
from ssdet.data.mini_world.render import (
    _SPLIT_KEYS,
    GROUND_TRUTH_DIR,
)
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


MARKER_FILE = "world.json"


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
