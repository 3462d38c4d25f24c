"""COCO JSON export and import of pseudo labels.

:func:`export_coco_results` and :func:`export_coco_annotations` write a selection as COCO results
or as a COCO annotation file with scores; :func:`import_coco_json` builds a store from either
(pseudo labels made by another tool).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from ssdet.data.pseudo_labels.filter import PseudoLabelSelection
from ssdet.data.pseudo_labels.store import (
    LabelingProvenance,
    PseudoLabelStore,
    StoreBuilder,
    build_metadata,
    class_dtype,
    encode_strings,
    gather_ranges,
    offsets_from_counts,
)
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_write_json, file_sha256

__all__ = ["export_coco_annotations", "export_coco_results", "import_coco_json"]


def _export_rows(
    selection: PseudoLabelSelection, category_ids: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Unique base images of a selection, their kept box rows, and the COCO category ids."""
    store = selection.store
    if category_ids is None:
        category_ids = list(range(1, len(store.class_names) + 1))
    if len(category_ids) != len(store.class_names):
        raise InputError(f"{len(category_ids)} category ids for {len(store.class_names)} classes")
    images = np.unique(selection.image_index)
    counts = np.diff(selection.box_offsets)[images]
    rows = selection.box_rows[gather_ranges(selection.box_offsets[images], counts)]
    return images, rows, list(category_ids)


def _coco_boxes(store: PseudoLabelStore, rows: np.ndarray) -> list[list[float]]:
    # XYWH in float64: x + w then reproduces the float32 x2 exactly on import.
    xyxy = store.boxes[rows].astype(np.float64)
    xyxy[:, 2:] -= xyxy[:, :2]
    return xyxy.tolist()


def export_coco_results(
    selection: PseudoLabelSelection,
    path: str | os.PathLike,
    category_ids: Sequence[int] | None = None,
) -> None:
    """Write a selection's boxes as COCO results: ``[{image_id, category_id, bbox, score}]``.

    Images duplicated by class balancing are written once. ``image_id`` is the store's
    ``image_ids`` column; ``bbox`` is XYWH in absolute pixels.

    Args:
        selection: what to export (``PseudoLabelFilter.keep_all().apply(store)`` for everything).
        path: the JSON file, written atomically.
        category_ids: COCO category id of each contiguous class; default ``1..C``.
    """
    store = selection.store
    images, rows, category_ids = _export_rows(selection, category_ids)
    counts = np.diff(selection.box_offsets)[images]
    image_ids = np.repeat(store.image_ids[images], counts).tolist()
    categories = np.asarray(category_ids, dtype=np.int64)[store.classes[rows]].tolist()
    results = [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(
            image_ids,
            categories,
            _coco_boxes(store, rows),
            store.scores[rows].tolist(),
            strict=True,
        )
    ]
    atomic_write_json(path, results, indent=None)


def export_coco_annotations(
    selection: PseudoLabelSelection,
    path: str | os.PathLike,
    category_ids: Sequence[int] | None = None,
) -> None:
    """Write a selection as a COCO annotation file with a ``score`` in every annotation.

    ``images`` lists every unique selected image (``id`` = the store's ``image_ids``, the stored
    file name, height, width); pseudo boxes are ``annotations`` (XYWH, area, iscrowd 0, score);
    ``categories`` are ``{id, name}`` in class order.

    Args:
        selection: what to export.
        path: the JSON file, written atomically.
        category_ids: COCO category id of each contiguous class; default ``1..C``.
    """
    store = selection.store
    images, rows, category_ids = _export_rows(selection, category_ids)
    counts = np.diff(selection.box_offsets)[images]
    image_records = [
        {
            "id": int(store.image_ids[i]),
            "file_name": store.stored_file_name(i),
            "height": int(store.heights[i]),
            "width": int(store.widths[i]),
        }
        for i in images.tolist()
    ]
    image_ids = np.repeat(store.image_ids[images], counts).tolist()
    categories = np.asarray(category_ids, dtype=np.int64)[store.classes[rows]].tolist()
    annotations = [
        {
            "id": k + 1,
            "image_id": i,
            "category_id": c,
            "bbox": b,
            "area": b[2] * b[3],
            "iscrowd": 0,
            "score": s,
        }
        for k, (i, c, b, s) in enumerate(
            zip(
                image_ids,
                categories,
                _coco_boxes(store, rows),
                store.scores[rows].tolist(),
                strict=True,
            )
        )
    ]
    coco = {
        "info": {"description": f"ssdet pseudo labels from {store.path}"},
        "images": image_records,
        "annotations": annotations,
        "categories": [
            {"id": int(cid), "name": name}
            for cid, name in zip(category_ids, store.class_names, strict=True)
        ],
    }
    atomic_write_json(path, coco, indent=None)


def import_coco_json(
    json_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    image_list_json: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    image_root: str = "",
    overwrite: bool = False,
) -> PseudoLabelStore:
    """Build a store from COCO JSON pseudo labels.

    Two inputs are accepted: a COCO annotation file whose annotations carry a ``score``, or COCO
    results (a list of ``{image_id, category_id, bbox, score}``) plus ``image_list_json``, a COCO
    annotation file that provides ``images`` and ``categories``. Images are stored in ascending
    ``id`` order, with the COCO id in ``image_ids``. Category ids map to contiguous class ids as
    Detectron2's ``load_coco_json`` does (by ascending id), or by name when ``class_names`` is
    given.

    Args:
        json_path: the annotation or results JSON.
        output_dir: the store directory to create.
        image_list_json: images and categories for a results file.
        class_names: the classes in contiguous order (e.g. the labeled set's ``thing_classes``).
        image_root: directory that relative file names are resolved against.
        overwrite: replace an existing store.

    Returns:
        The new store, opened. Its score floor is recorded as 0 (unknown).

    Raises:
        InputError: the JSON is not of either form, or its values do not make a sound store
            (empty or inverted boxes, duplicate image ids, ...; see
            :mod:`~ssdet.data.pseudo_labels.integrity`).
    """
    with open(json_path) as f:
        data = json.load(f)
    if isinstance(data, list):
        if image_list_json is None:
            raise InputError(
                f"{json_path} is in COCO results format; pass image_list_json, a COCO annotation "
                "file with the images and categories"
            )
        with open(image_list_json) as f:
            listing = json.load(f)
        images, categories, annotations = listing["images"], listing["categories"], data
    else:
        images, categories, annotations = data["images"], data["categories"], data["annotations"]
    if any("score" not in a for a in annotations):
        raise InputError(f"{json_path}: pseudo-label annotations need a 'score' field")

    categories = sorted(categories, key=lambda c: c["id"])
    if class_names is None:
        class_names = [c["name"] for c in categories]
        contiguous = {c["id"]: k for k, c in enumerate(categories)}
    else:
        class_names = list(class_names)
        unknown = [c["name"] for c in categories if c["name"] not in class_names]
        if unknown:
            raise InputError(f"{json_path}: categories {unknown} are not in class_names")
        contiguous = {c["id"]: class_names.index(c["name"]) for c in categories}

    images = sorted(images, key=lambda im: im["id"])
    coco_ids = np.array([im["id"] for im in images], dtype=np.int64)
    ann_image_ids = np.array([a["image_id"] for a in annotations], dtype=np.int64)
    position = np.searchsorted(coco_ids, ann_image_ids)
    if len(annotations) and (
        position.max() >= len(coco_ids) or (coco_ids[position] != ann_image_ids).any()
    ):
        raise InputError(f"{json_path}: annotations refer to image ids not in the image list")
    try:
        classes = np.array([contiguous[a["category_id"]] for a in annotations], dtype=np.int64)
    except KeyError as e:
        raise InputError(f"{json_path}: unknown category id {e.args[0]}") from e
    xywh = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    xywh[:, 2:] += xywh[:, :2]
    scores = np.array([a["score"] for a in annotations], dtype=np.float32)
    # The store's invariant: images in order, boxes score-descending within each (stable).
    order = np.lexsort((np.arange(len(scores)), -scores, position))
    counts = np.bincount(position, minlength=len(images))
    name_bytes, name_offsets = encode_strings([im["file_name"] for im in images])

    provenance = LabelingProvenance(
        class_names=class_names,
        listing_path=os.path.abspath(os.fspath(json_path)),
        listing_sha256=file_sha256(json_path),
        listing_size=len(images),
        image_root=image_root,
    )
    with StoreBuilder(output_dir, overwrite) as builder:
        builder.save("image_offsets", offsets_from_counts(counts))
        builder.save("image_ids", coco_ids)
        builder.save("heights", np.array([im.get("height", 0) for im in images], np.int32))
        builder.save("widths", np.array([im.get("width", 0) for im in images], np.int32))
        builder.save("file_name_offsets", name_offsets)
        builder.save("file_name_bytes", name_bytes)
        builder.save("boxes", xywh[order].astype(np.float32))
        builder.save("scores", scores[order])
        builder.save("classes", classes[order].astype(class_dtype(len(class_names))))
        return builder.commit(
            build_metadata(
                provenance,
                source="import_coco_json",
                score_floor=0.0,
                num_images=len(images),
                num_boxes=len(scores),
                failed_images=[],
            )
        )
