"""COCO JSON export and import of pseudo labels, with the ids of the images' own dataset.

:func:`export_coco_results` and :func:`export_coco_annotations` write a selection as COCO results
or as a COCO annotation file with scores; :func:`import_coco_json` builds a store from either
(pseudo labels made by another tool). :class:`CocoIds` says which ids they write and read, so
that pycocotools evaluates an export against its dataset's own annotation file:

- :meth:`CocoIds.from_dataset`: a registered COCO-format dataset's image ids (by file name) and
  category ids (by class name, Detectron2's ``thing_dataset_id_to_contiguous_id``);
- :meth:`CocoIds.from_json`: the ids of a COCO file's ``images`` and ``categories``, e.g. an image
  list written by an earlier export;
- :meth:`CocoIds.from_store`: for an image folder, which has no ids of its own: the store's listing
  index as image id and 1..C as category ids, recorded by :func:`export_pseudo_labels` in an
  image list beside the export.

:func:`export_pseudo_labels` and :func:`import_pseudo_labels` are ``tools/export_pseudo_labels.py``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ssdet.data.datasets import unknown_dataset_hint
from ssdet.data.image_folder import ImageFolderListing
from ssdet.data.pseudo_labels.filter import PseudoLabelFilter, PseudoLabelSelection
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

__all__ = [
    "CocoIds",
    "export_coco_annotations",
    "export_coco_results",
    "export_pseudo_labels",
    "import_coco_json",
    "import_pseudo_labels",
]

logger = logging.getLogger(__name__)

# The image list a folder export writes beside OUT.json: OUT.images.json.
IMAGE_LIST_SUFFIX = ".images.json"


def _path_key(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


@dataclass(frozen=True)
class CocoIds:
    """The COCO image and category ids of a dataset's images and classes.

    Attributes:
        source: where the ids come from (a dataset name or a file), for messages.
        image_root: the folder that the images' ``file_name`` entries are relative to.
        images: COCO image records ``{id, file_name, height, width}``.
        categories: COCO categories ``{id, name}``, in ascending id order.
    """

    source: str
    image_root: str
    images: list[dict[str, Any]]
    categories: list[dict[str, Any]]

    @classmethod
    def from_dataset(cls, name: str) -> CocoIds:
        """The ids of a registered dataset: COCO-format, or an image folder with ground truth.

        Args:
            name: a dataset whose loader is Detectron2's ``load_coco_json`` (it sets
                ``thing_dataset_id_to_contiguous_id``), or an image folder whose
                ``ground_truth_json`` metadata names its COCO file (the mini world's
                mini-ImageNet).

        Raises:
            InputError: an unknown dataset, or one without COCO ids.
        """
        if name not in DatasetCatalog.list():
            raise InputError(f"Unknown dataset {name!r}. {unknown_dataset_hint(name)}")
        dicts = DatasetCatalog.get(name)
        metadata = MetadataCatalog.get(name)
        if isinstance(dicts, ImageFolderListing):
            ground_truth = metadata.get("ground_truth_json")
            if not ground_truth or not os.path.isfile(ground_truth):
                raise InputError(
                    f"Dataset {name!r} is an image folder without a COCO file: its images have "
                    "no COCO ids. Export without --dataset: the ids used are written beside."
                )
            return cls.from_json(ground_truth, dicts.root)
        id_map = metadata.get("thing_dataset_id_to_contiguous_id")
        classes = metadata.get("thing_classes")
        image_root = metadata.get("image_root")
        if id_map is None or classes is None or not image_root:
            raise InputError(
                f"Dataset {name!r} is not COCO-format (no thing_dataset_id_to_contiguous_id, "
                "thing_classes and image_root metadata), so it has no COCO ids to keep."
            )
        category_id = {k: dataset_id for dataset_id, k in id_map.items()}
        images = [
            {
                "id": int(d["image_id"]),
                "file_name": os.path.relpath(d["file_name"], image_root),
                "height": int(d.get("height", 0)),
                "width": int(d.get("width", 0)),
            }
            for d in dicts
        ]
        categories = [{"id": int(category_id[k]), "name": c} for k, c in enumerate(classes)]
        return cls(name, image_root, images, sorted(categories, key=lambda c: c["id"]))

    @classmethod
    def from_json(cls, json_file: str | os.PathLike, image_root: str) -> CocoIds:
        """The ids of a COCO file's ``images`` and ``categories`` (its annotations are not read).

        Args:
            json_file: a COCO annotation file or image list.
            image_root: the folder its ``file_name`` entries are relative to.
        """
        json_file = os.fspath(json_file)
        try:
            with open(json_file, encoding="utf-8") as f:
                data = json.load(f)
            images = [
                {
                    "id": int(im["id"]),
                    "file_name": str(im["file_name"]),
                    "height": int(im.get("height", 0)),
                    "width": int(im.get("width", 0)),
                }
                for im in data["images"]
            ]
            categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in data["categories"]]
        except (OSError, ValueError) as e:
            raise InputError(f"Cannot read {json_file!r} as JSON: {e}") from e
        except (KeyError, TypeError) as e:
            raise InputError(
                f"{json_file!r} is not a COCO file with 'images' (id, file_name) and "
                f"'categories' (id, name) (problem: {e!r})."
            ) from e
        return cls(json_file, image_root, images, sorted(categories, key=lambda c: c["id"]))

    @classmethod
    def from_store(cls, store: PseudoLabelStore) -> CocoIds:
        """Ids for images that have none (an image folder): the listing index and 1..C."""
        images = [
            {
                "id": int(store.image_ids[i]),
                "file_name": store.stored_file_name(i),
                "height": int(store.heights[i]),
                "width": int(store.widths[i]),
            }
            for i in range(store.num_images)
        ]
        categories = [{"id": k + 1, "name": c} for k, c in enumerate(store.class_names)]
        return cls(store.path, store.image_root, images, categories)

    @property
    def class_names(self) -> list[str]:
        """The category names in ascending id order: Detectron2's contiguous classes."""
        return [c["name"] for c in self.categories]

    def category_ids(self, class_names: Sequence[str]) -> list[int]:
        """The category id of each class, matched by name.

        Raises:
            InputError: a class that no category is named.
        """
        by_name = {c["name"]: c["id"] for c in self.categories}
        missing = [c for c in class_names if c not in by_name]
        if missing:
            raise InputError(
                f"Classes {missing} of the pseudo labels are not categories of {self.source!r} "
                f"({', '.join(by_name)}): they are not the dataset the teacher was trained for."
            )
        return [int(by_name[c]) for c in class_names]

    def image_ids(self, store: PseudoLabelStore) -> np.ndarray:
        """int64 (N,) the image id of each store image, matched by its absolute path.

        Raises:
            InputError: store images that are not images of these ids (counted, first named).
        """
        by_path = {
            _path_key(os.path.join(self.image_root, im["file_name"])): im["id"]
            for im in self.images
        }
        ids = [by_path.get(_path_key(store.file_name(i)), None) for i in range(store.num_images)]
        missing = [store.file_name(i) for i, v in enumerate(ids) if v is None]
        if missing:
            raise InputError(
                f"{len(missing)} of the {store.num_images} images of {store.path} are not images "
                f"of {self.source!r} (image root {self.image_root!r}; first: "
                f"{', '.join(missing[:3])}). Name the dataset the teacher labeled."
            )
        return np.asarray(ids, dtype=np.int64)

    def image_list(self) -> dict[str, Any]:
        """A COCO file of these images and categories, without annotations."""
        return {
            # image_root: where import_pseudo_labels finds the images by default.
            "info": {
                "description": f"ssdet image ids of {self.source}",
                "image_root": self.image_root,
            },
            "images": self.images,
            "annotations": [],
            "categories": self.categories,
        }


def _export_rows(
    selection: PseudoLabelSelection, ids: CocoIds | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, CocoIds]:
    """Unique base images of a selection, their kept box rows, and the rows' COCO ids."""
    store = selection.store
    if ids is None:
        ids = CocoIds.from_store(store)
    category_ids = np.asarray(ids.category_ids(store.class_names), dtype=np.int64)
    image_ids = ids.image_ids(store)
    images = np.unique(selection.image_index)
    counts = np.diff(selection.box_offsets)[images]
    rows = selection.box_rows[gather_ranges(selection.box_offsets[images], counts)]
    row_image_ids = np.repeat(image_ids[images], counts)
    return images, rows, row_image_ids, category_ids[store.classes[rows]], ids


def _coco_boxes(store: PseudoLabelStore, rows: np.ndarray) -> list[list[float]]:
    # XYWH in float64: x + w then reproduces the float32 x2 exactly on import.
    xyxy = store.boxes[rows].astype(np.float64)
    xyxy[:, 2:] -= xyxy[:, :2]
    return xyxy.tolist()


def export_coco_results(
    selection: PseudoLabelSelection, path: str | os.PathLike, ids: CocoIds | None = None
) -> None:
    """Write a selection's boxes as COCO results: ``[{image_id, category_id, bbox, score}]``.

    Images duplicated by class balancing are written once; ``bbox`` is XYWH in absolute pixels.

    Args:
        selection: what to export (``PseudoLabelFilter.keep_all().apply(store)`` for everything).
        path: the JSON file, written atomically.
        ids: the image and category ids to write, e.g. ``CocoIds.from_dataset(name)``, so that
            pycocotools evaluates the file against that dataset; default
            ``CocoIds.from_store``: the listing index and ``1..C``.

    Raises:
        InputError: images or classes that ``ids`` does not have.
    """
    store = selection.store
    _, rows, image_ids, categories, _ = _export_rows(selection, ids)
    results = [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(
            image_ids.tolist(),
            categories.tolist(),
            _coco_boxes(store, rows),
            store.scores[rows].tolist(),
            strict=True,
        )
    ]
    atomic_write_json(path, results, indent=None)


def export_coco_annotations(
    selection: PseudoLabelSelection, path: str | os.PathLike, ids: CocoIds | None = None
) -> None:
    """Write a selection as a COCO annotation file with a ``score`` in every annotation.

    ``images`` lists every unique selected image (its id and ``file_name`` as ``ids`` has them,
    height, width); pseudo boxes are ``annotations`` (XYWH, area, iscrowd 0, score);
    ``categories`` are ``{id, name}`` in class order.

    Args:
        selection: what to export.
        path: the JSON file, written atomically.
        ids: the image and category ids, as for :func:`export_coco_results`.
    """
    store = selection.store
    images, rows, image_ids, categories, ids = _export_rows(selection, ids)
    records = {im["id"]: im for im in ids.images}
    selected_ids = ids.image_ids(store)[images].tolist()
    # The dataset's own record; the store's size where the dataset does not give one.
    image_records = [
        {
            **records[i],
            "height": records[i]["height"] or int(store.heights[k]),
            "width": records[i]["width"] or int(store.widths[k]),
        }
        for i, k in zip(selected_ids, images.tolist(), strict=True)
    ]
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
                image_ids.tolist(),
                categories.tolist(),
                _coco_boxes(store, rows),
                store.scores[rows].tolist(),
                strict=True,
            )
        )
    ]
    category_ids = ids.category_ids(store.class_names)
    coco = {
        "info": {"description": f"ssdet pseudo labels from {store.path}"},
        "images": image_records,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name}
            for cid, name in zip(category_ids, store.class_names, strict=True)
        ],
    }
    atomic_write_json(path, coco, indent=None)


def import_coco_json(
    json_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    image_list_json: str | os.PathLike | None = None,
    ids: CocoIds | None = None,
    class_names: Sequence[str] | None = None,
    image_root: str = "",
    overwrite: bool = False,
) -> PseudoLabelStore:
    """Build a store from COCO JSON pseudo labels.

    Two inputs are accepted: a COCO annotation file whose annotations carry a ``score``, or COCO
    results (a list of ``{image_id, category_id, bbox, score}``) plus the images and categories
    of their ids: ``image_list_json``, a COCO annotation file, or ``ids`` (e.g.
    ``CocoIds.from_dataset(name)``). Images are stored in ascending ``id`` order, with the COCO id
    in ``image_ids``. Category ids map to contiguous class ids as Detectron2's ``load_coco_json``
    does (by ascending id), or by name when ``class_names`` is given.

    Args:
        json_path: the annotation or results JSON.
        output_dir: the store directory to create.
        image_list_json: images and categories for a results file.
        ids: images and categories for a results file, and (unless given) the image root.
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
        if ids is not None:
            listing = ids.image_list()
            image_root = image_root or ids.image_root
        elif image_list_json is not None:
            with open(image_list_json) as f:
                listing = json.load(f)
        else:
            raise InputError(
                f"{json_path} is in COCO results format; pass image_list_json, a COCO annotation "
                "file with the images and categories"
            )
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


def export_pseudo_labels(
    store_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    dataset: str | None = None,
    image_ids_json: str | os.PathLike | None = None,
    annotations: bool = False,
    score_thresh: float = 0.0,
) -> list[str]:
    """Export a store as COCO JSON with its images' dataset's ids (tools/export_pseudo_labels.py).

    Args:
        store_dir: the pseudo-label store.
        output: the JSON file.
        dataset: the registered dataset the teacher labeled: its image and category ids are kept
            (see :meth:`CocoIds.from_dataset`).
        image_ids_json: instead, a COCO file whose ``images`` (file names relative to the store's
            image root) and ``categories`` give the ids, e.g. an earlier export's image list.
        annotations: write a COCO annotation file with scores instead of COCO results.
        score_thresh: export only boxes scoring at least this (0 = every stored box).

    Returns:
        The files written: ``output``, and, when neither ``dataset`` nor ``image_ids_json`` gives
        the ids, the image list ``<output stem>.images.json`` recording the ones used (the
        listing index and 1..C): pass it to a later export or import to keep them.

    Raises:
        InputError: both id sources, an unknown dataset, or images or classes it lacks.
    """
    if dataset and image_ids_json:
        raise InputError("Give the ids by --dataset or by --image-ids, not both.")
    store = PseudoLabelStore.open(store_dir)
    if dataset:
        ids = CocoIds.from_dataset(dataset)
    elif image_ids_json:
        ids = CocoIds.from_json(image_ids_json, store.image_root)
    else:
        ids = CocoIds.from_store(store)
    if score_thresh > 0:
        selection = PseudoLabelFilter(score_thresh=score_thresh).apply(store)
    else:
        selection = PseudoLabelFilter.keep_all().apply(store)
    write = export_coco_annotations if annotations else export_coco_results
    write(selection, output, ids)
    written = [os.fspath(output)]
    if not dataset and not image_ids_json:
        stem = os.path.splitext(os.fspath(output))[0]
        atomic_write_json(stem + IMAGE_LIST_SUFFIX, ids.image_list(), indent=None)
        written.append(stem + IMAGE_LIST_SUFFIX)
    return written


def import_pseudo_labels(
    json_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dataset: str | None = None,
    images_json: str | os.PathLike | None = None,
    image_root: str = "",
    overwrite: bool = False,
) -> PseudoLabelStore:
    """Import COCO JSON pseudo labels as a store (``tools/export_pseudo_labels.py import``).

    Args:
        json_path: COCO results, or a COCO annotation file with scores.
        output_dir: the store directory to create.
        dataset: the registered dataset whose ids the JSON uses: its images (file names, image
            root) and classes make the store, which a student then trains on.
        images_json: instead, a COCO file with the images and categories (e.g. an export's
            ``.images.json``); needed for results without ``dataset``.
        image_root: the folder of the images' file names (default: the dataset's, or the one
            that an export's image list records).
        overwrite: replace an existing store.

    Returns:
        The new store.
    """
    if dataset and images_json:
        raise InputError("Give the images by --dataset or by --images, not both.")
    ids = CocoIds.from_dataset(dataset) if dataset else None
    if images_json and not image_root:
        with open(images_json, encoding="utf-8") as f:
            info = json.load(f).get("info")
        image_root = info.get("image_root", "") if isinstance(info, dict) else ""
    return import_coco_json(
        json_path,
        output_dir,
        image_list_json=images_json,
        ids=ids,
        class_names=ids.class_names if ids else None,
        image_root=image_root or (ids.image_root if ids else ""),
        overwrite=overwrite,
    )
