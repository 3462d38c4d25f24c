"""Ground truth of unlabeled images, read only to measure pseudo labels, never to train on.

The mini world knows the objects in its mini-ImageNet images and writes them to a side file,
``mini_imagenet/annotations/instances_{train,val}.json`` (COCO instances format, file names
relative to the split's image folder), which :func:`~ssdet.data.datasets.register_all` records as
the ``ground_truth_json`` metadata of ``mini_imagenet_{train,val}``. The pseudo-label report
(:func:`~ssdet.data.pseudo_labels.report.build_report`) then measures the teacher's precision and
recall on them; ImageNet has no such file, and its report has no ground-truth section. A
``<train>_remainder`` dataset (:func:`~ssdet.data.datasets.register_remainder`) records its
training set's annotation file the same way: the semi-supervised protocol's unlabeled images are
labeled images whose labels only the report reads.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np
from detectron2.data import MetadataCatalog

from ssdet.data.pseudo_labels.store import PseudoLabelStore
from ssdet.utils.errors import InputError

__all__ = ["GroundTruthBoxes", "find_ground_truth", "load_ground_truth"]


class GroundTruthBoxes(NamedTuple):
    """The annotated objects of one image.

    Attributes:
        boxes: float64 (K, 4) XYXY in absolute pixels.
        class_names: the K objects' class names.
    """

    boxes: np.ndarray
    class_names: list[str]


def load_ground_truth(json_file: str | os.PathLike) -> dict[str, GroundTruthBoxes]:
    """Read a COCO instances file into file name -> the image's objects.

    Classes are kept as names, not ids: the teacher's class ids number its own classes, and a
    class the teacher does not know (the mini world's novel classes) must match none of them.
    ``iscrowd`` is not read (the mini world writes no crowd regions).

    Args:
        json_file: COCO instances JSON: ``images`` (``id``, ``file_name``), ``annotations``
            (``image_id``, ``category_id``, ``bbox`` XYWH in pixels), ``categories`` (``id``,
            ``name``).

    Returns:
        ``file_name`` as written in the JSON (relative to its image folder) -> its objects; an
        image without annotations has zero boxes.

    Raises:
        InputError: naming the file, when it is missing, not JSON or not COCO instances.
    """
    json_file = os.fspath(json_file)
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    # JSONDecodeError and UnicodeDecodeError are ValueErrors.
    except (OSError, ValueError) as e:
        raise InputError(
            f"Ground truth {json_file!r} cannot be read as JSON ({e}): regenerate it, or remove it "
            "to report pseudo labels without precision and recall."
        ) from e
    try:
        names = {c["id"]: str(c["name"]) for c in data["categories"]}
        file_names = {im["id"]: str(im["file_name"]) for im in data["images"]}
        objects: dict[int, tuple[list[tuple[float, ...]], list[str]]] = {
            image_id: ([], []) for image_id in file_names
        }
        for a in data["annotations"]:
            boxes, classes = objects[a["image_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes.append((x, y, x + w, y + h))
            classes.append(names[a["category_id"]])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"Ground truth {json_file!r} is not a COCO instances file (problem: {e!r}). It needs "
            "'images' (id, file_name), 'annotations' (image_id, category_id, bbox) and "
            "'categories' (id, name)."
        ) from e
    return {
        file_names[image_id]: GroundTruthBoxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), c)
        for image_id, (boxes, c) in objects.items()
    }


def find_ground_truth(store: PseudoLabelStore) -> str | None:
    """The ground-truth file of a store's images, if a registered dataset has one.

    A store's file names are relative to its ``image_root``, and a ground-truth file's to its
    dataset's image folder: the file applies when the two folders are the same. This holds
    whether the teacher labeled the dataset by name or its folder by path, and needs nothing but
    the store itself.

    Args:
        store: the pseudo-label store.

    Returns:
        The ``ground_truth_json`` of the first registered dataset whose ``image_root`` is the
        store's, when that file exists; else None.
    """
    if not store.image_root:
        return None
    root = os.path.realpath(store.image_root)
    for name in MetadataCatalog.list():
        metadata = MetadataCatalog.get(name)
        json_file = metadata.get("ground_truth_json")
        image_root = metadata.get("image_root")
        if json_file and image_root and os.path.realpath(image_root) == root:
            return json_file if os.path.isfile(json_file) else None
    return None
