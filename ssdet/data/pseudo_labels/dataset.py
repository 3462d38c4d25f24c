"""The Detectron2 view of a selection: dataset dicts built on demand, and catalog registration.

:class:`PseudoLabelDataset` turns a
:class:`~ssdet.data.pseudo_labels.filter.PseudoLabelSelection` into Detectron2 dataset dicts
without building a list of them; :func:`register_pseudo_label_dataset` registers a filtered store
in ``DatasetCatalog`` and ``MetadataCatalog``; :func:`load_pseudo_label_dataset` builds the
student's dataset from ``SSDET.PSEUDO_LABELS``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ssdet.data.pseudo_labels.filter import PseudoLabelFilter, PseudoLabelSelection
from ssdet.data.pseudo_labels.store import PseudoLabelStore, read_metadata
from ssdet.utils.errors import InputError

__all__ = ["PseudoLabelDataset", "load_pseudo_label_dataset", "register_pseudo_label_dataset"]

logger = logging.getLogger(__name__)


class PseudoLabelDataset(torchdata.Dataset, Sequence):
    """A selection seen as Detectron2 dataset dicts, built on demand from the arrays.

    A ``torch.utils.data.Dataset``, so ``get_detection_dataset_dicts`` returns it as is (no
    ``list()`` of 1.28M dicts), and ``build_detection_train_loader`` wraps it in ``MapDataset``
    with a ``TrainingSampler``. It holds only numpy arrays and memory maps: forked DataLoader
    workers share them without the copy-on-read growth that lists of Python dicts suffer.

    Each item: ``{"file_name", "image_id", "height", "width", "annotations": [{"bbox" (XYXY),
    "bbox_mode": BoxMode.XYXY_ABS, "category_id" (contiguous), "score"}]}``; "height" and "width"
    are left out when unknown (stored as 0), so that ``DatasetMapper`` takes them from the image.
    The filter's ignore regions follow the kept boxes with ``category_id`` -1: Detectron2's
    RetinaNet gives the anchors it matches to them the label -1, which its losses skip.

    Args:
        selection: the output of :meth:`PseudoLabelFilter.apply`.
    """

    def __init__(self, selection: PseudoLabelSelection):
        self.selection = selection
        store = selection.store
        self._image_root = store.image_root
        self._image_index = selection.image_index
        self._box_offsets = selection.box_offsets
        self._box_rows = selection.box_rows
        self._ignore_offsets = selection.ignore_offsets
        self._ignore_rows = selection.ignore_rows
        # The box columns and file names (~30 bytes per box, most of a store) are read with pread
        # (see ColumnReader), so the workers' memory stays flat however many images they visit.
        # The per-image columns (24 bytes per image, 31 MB for ImageNet) stay memory-mapped: one
        # index is cheaper than a system call, and their pages are shared by all workers.
        self._reader = store.reader()
        self._image_ids = store.image_ids
        self._heights = store.heights
        self._widths = store.widths
        self._name_offsets = store.file_name_offsets
        # The pages the filter touched (whole score and class columns) are not needed any more.
        store.release_pages()

    def __reduce__(self):
        # Rebuilt from the selection, whose store pickles as its path (see PseudoLabelStore).
        return (PseudoLabelDataset, (self.selection,))

    def __len__(self) -> int:
        return len(self._image_index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        size = len(self._image_index)
        if not -size <= idx < size:
            raise IndexError(f"pseudo-label dataset index {idx} out of range for {size} images")
        i = int(self._image_index[idx])
        start, end = self._box_offsets[i : i + 2].tolist()
        rows = self._box_rows[start:end]
        if self._ignore_offsets is not None:
            ignore_start, ignore_end = self._ignore_offsets[i : i + 2].tolist()
            ignore_rows = self._ignore_rows[ignore_start:ignore_end]
        else:
            ignore_rows = rows[:0]
        annotations = []
        if len(rows) or len(ignore_rows):
            # An image's rows are contiguous in the store and the selected ones ascending: read
            # the span once per column (3 system calls) and pick the rows from it.
            first = min(int(r[0]) for r in (rows, ignore_rows) if len(r))
            stop = max(int(r[-1]) for r in (rows, ignore_rows) if len(r)) + 1
            read = self._reader.rows
            boxes, classes, scores = (
                read("boxes", first, stop),
                read("classes", first, stop),
                read("scores", first, stop),
            )
            if stop - first != len(rows):
                picked = rows - first
                kept = boxes[picked], classes[picked], scores[picked]
            else:
                kept = boxes, classes, scores
            annotations = [
                {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "score": s}
                for box, c, s in zip(*(a.tolist() for a in kept), strict=True)
            ]
            if len(ignore_rows):
                picked = ignore_rows - first
                annotations += [
                    {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": -1, "score": s}
                    for box, s in zip(boxes[picked].tolist(), scores[picked].tolist(), strict=True)
                ]
        name_start, name_end = self._name_offsets[i : i + 2].tolist()
        file_name = self._reader.raw("file_name_bytes", name_start, name_end).decode("utf-8")
        if self._image_root:
            file_name = os.path.join(self._image_root, file_name)
        record = {"file_name": file_name, "image_id": int(self._image_ids[i])}
        height, width = int(self._heights[i]), int(self._widths[i])
        if height > 0 and width > 0:
            record["height"] = height
            record["width"] = width
        record["annotations"] = annotations
        return record


def register_pseudo_label_dataset(
    name: str, store_dir: str | os.PathLike, pseudo_filter: PseudoLabelFilter
) -> None:
    """Register a filtered store as a Detectron2 dataset.

    ``DatasetCatalog.get(name)`` opens the store, applies the filter and returns a
    :class:`PseudoLabelDataset`; ``MetadataCatalog.get(name)`` gets ``thing_classes`` (the store's
    class names) and ``pseudo_label_store``.

    Args:
        name: the dataset name, e.g. "imagenet_pseudo_labels".
        store_dir: the store directory.
        pseudo_filter: e.g. ``PseudoLabelFilter.from_config(cfg)``.
    """
    store_dir = os.path.abspath(os.fspath(store_dir))
    metadata = read_metadata(store_dir)  # fail at registration, not at the first iteration

    def load() -> PseudoLabelDataset:
        return PseudoLabelDataset(pseudo_filter.apply(PseudoLabelStore.open(store_dir)))

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(metadata["class_names"]), pseudo_label_store=store_dir
    )


def load_pseudo_label_dataset(cfg: CfgNode) -> PseudoLabelDataset:
    """The student's pseudo-labeled images: the store at ``SSDET.PSEUDO_LABELS.STORE``, filtered.

    The filter is ``PseudoLabelFilter.from_config(cfg)`` (score thresholds, class balancing, ...).

    Returns:
        A lazy sequence of Detectron2 dataset dicts (see :class:`PseudoLabelDataset`).

    Raises:
        InputError: no store is configured or found, the store's classes are not those of the
            labeled datasets, or the filter keeps no image.
    """
    store_dir = cfg.SSDET.PSEUDO_LABELS.STORE
    if not store_dir:
        raise InputError(
            "SSDET.PSEUDO_LABELS.STORE is empty: the student trains on the teacher's pseudo "
            "labels. Label unlabeled images with the teacher first (tools/pseudo_label.py) and set "
            "SSDET.PSEUDO_LABELS.STORE to the store directory, or set "
            "SSDET.SELF_TRAINING.PSEUDO_RATIO 0 to train on human labels only."
        )
    if not os.path.isdir(store_dir):
        raise InputError(
            f"Pseudo-label store {store_dir!r} (SSDET.PSEUDO_LABELS.STORE) not found: label the "
            "unlabeled images with the teacher first (tools/pseudo_label.py) or fix the path."
        )
    store = PseudoLabelStore.open(store_dir)
    for name in cfg.DATASETS.TRAIN:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and list(classes) != store.class_names:
            raise InputError(
                f"The pseudo labels in {store.path} have classes {store.class_names[:10]}... "
                f"({len(store.class_names)}) but the labeled dataset {name!r} has "
                f"{list(classes)[:10]}... ({len(classes)}): the teacher must be trained on the "
                "same classes, in the same order, as the student."
            )
    pseudo_filter = PseudoLabelFilter.from_config(cfg)
    selection = pseudo_filter.apply(store)
    dataset = PseudoLabelDataset(selection)
    if len(dataset) == 0:
        raise InputError(
            f"SSDET.PSEUDO_LABELS keeps no image of the {store.num_images} in {store.path}: no "
            f"image has a box at SCORE_THRESH {cfg.SSDET.PSEUDO_LABELS.SCORE_THRESH}. Lower it, or "
            "set SSDET.PSEUDO_LABELS.KEEP_EMPTY_IMAGES True to train on background-only images."
        )
    logger.info(
        "Pseudo-labeled images: %s (of %s in %s), %s boxes",
        len(dataset),
        store.num_images,
        store.path,
        selection.num_kept_boxes,
    )
    return dataset
