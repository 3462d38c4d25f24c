"""Pseudo labels: the teacher's boxes on unlabeled images, stored for the student.

The paper's teacher labels 1.28M ImageNet images once; the student then trains on COCO plus these
pseudo boxes. The life cycle here:

1. Labeling (``tools/pseudo_label.py``): each rank fills a :class:`PseudoLabelShardWriter` with
   every detection above a low score floor (``SSDET.PSEUDO_LABELS.LABELING_SCORE_FLOOR``) and writes
   one shard file; :func:`merge_shards` joins the shards into a store, in the listing's order.
2. Training: :meth:`PseudoLabelStore.open` memory-maps the store, :class:`PseudoLabelFilter` picks
   boxes and images (score threshold, class balancing) as index arrays, so a threshold sweep needs
   no second teacher pass, and :class:`PseudoLabelDataset` builds Detectron2 dataset dicts on
   demand.

On-disk store (a directory, format version 1). Every array is a ``.npy`` file that
``np.load(path, mmap_mode="r")`` maps without pickle. N images, M boxes:

- ``image_offsets``     int64   (N+1,) boxes of image i are rows ``offsets[i]:offsets[i+1]``
- ``image_ids``         int64   (N,)   the image's index in the input listing (COCO id if imported)
- ``heights``/``widths`` int32  (N,)   image size in pixels, 0 when unknown
- ``file_name_offsets`` int64   (N+1,) UTF-8 file name of image i is bytes ``[off[i]:off[i+1]]`` of
- ``file_name_bytes``   uint8   (total name bytes,)
- ``boxes``             float32 (M, 4) XYXY in absolute pixels
- ``scores``            float32 (M,)   teacher scores; score-descending within each image
- ``classes``           int16 or int32 (M,) contiguous 0-based class ids (Detectron2's)
- ``metadata.json``     provenance and counts, written last: a directory without a valid one is
  refused. The whole directory is built under a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Instances

from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open, atomic_write_json

__all__ = [
    "FORMAT_VERSION",
    "ColumnReader",
    "LabelingProvenance",
    "PseudoLabelDataset",
    "PseudoLabelFilter",
    "PseudoLabelSelection",
    "PseudoLabelShardWriter",
    "PseudoLabelStore",
    "PseudoLabelStoreError",
    "export_coco_annotations",
    "export_coco_results",
    "file_sha256",
    "import_coco_json",
    "is_almost_empty",
    "merge_shards",
    "read_metadata",
    "register_pseudo_label_dataset",
    "warn_if_almost_empty",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "ssdet.pseudo_labels"
FORMAT_VERSION = 1
SHARD_FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"

# Column name -> (accepted dtypes, ndim). The reader checks every column against this.
_COLUMNS: dict[str, tuple[tuple[type, ...], int]] = {
    "image_offsets": ((np.int64,), 1),
    "image_ids": ((np.int64,), 1),
    "heights": ((np.int32,), 1),
    "widths": ((np.int32,), 1),
    "file_name_offsets": ((np.int64,), 1),
    "file_name_bytes": ((np.uint8,), 1),
    "boxes": ((np.float32,), 2),
    "scores": ((np.float32,), 1),
    "classes": ((np.int16, np.int32), 1),
}

# Below this fraction of images with at least one kept box, the filter warns (see
# warn_if_almost_empty): the "no pseudo boxes" failure that otherwise shows only as a student
# that does not improve.
ALMOST_EMPTY_FRACTION = 0.01

BALANCE_SUBSAMPLE_RULES = ("top_score", "random")


class PseudoLabelStoreError(InputError):
    """Raised for a directory that is not a complete pseudo-label store."""


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file (teacher weights, input listing) for the provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------------
# Small array helpers
# -------------------------------------------------------------------------------------------------


def _encode_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 encode strings into one uint8 blob and int64 offsets of shape (len + 1,)."""
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _decode_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = blob.tobytes()
    return [
        data[a:b].decode("utf-8")
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


def _gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + n)`` for every (s, n) pair, vectorized.

    Args:
        starts: int (K,) first index of each range.
        lengths: int (K,) length of each range.

    Returns:
        int64 (lengths.sum(),) the indices of all ranges, in order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    range_starts_in_output = np.cumsum(lengths) - lengths
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - range_starts_in_output, lengths)
    return np.arange(total, dtype=np.int64) + shift


def _offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _class_dtype(num_classes: int) -> type:
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def _row_dtype(num_rows: int) -> type:
    # Kept-box row indices are the filter's largest array; int32 halves it below 2**31 boxes.
    return np.int32 if num_rows <= np.iinfo(np.int32).max else np.int64


# -------------------------------------------------------------------------------------------------
# Provenance and metadata
# -------------------------------------------------------------------------------------------------


@dataclass
class LabelingProvenance:
    """What the labeling run knows about the origin of its pseudo labels (goes to metadata.json).

    Attributes:
        class_names: the teacher's class names, in contiguous class-id order.
        teacher_config_path: the teacher's config file.
        teacher_config_text: the resolved teacher config (``cfg.dump()``); its sha256 is stored too.
        teacher_weights_path: the teacher's checkpoint.
        teacher_weights_sha256: :func:`file_sha256` of the checkpoint.
        listing_path: the file listing the unlabeled images (its entry order is the image index).
        listing_sha256: :func:`file_sha256` of the listing.
        listing_size: number of images in the listing; when set, :func:`merge_shards` checks that
            every one of them was labeled or recorded as failed.
        image_root: directory that relative file names are resolved against ("" = as stored).
    """

    class_names: list[str]
    teacher_config_path: str = ""
    teacher_config_text: str = ""
    teacher_weights_path: str = ""
    teacher_weights_sha256: str = ""
    listing_path: str = ""
    listing_sha256: str = ""
    listing_size: int | None = None
    image_root: str = ""


def _build_metadata(
    provenance: LabelingProvenance,
    *,
    source: str,
    score_floor: float,
    num_images: int,
    num_boxes: int,
    failed_images: list[dict[str, Any]],
) -> dict[str, Any]:
    import detectron2

    import ssdet

    config_text = provenance.teacher_config_text
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source": source,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "ssdet": ssdet.__version__,
            "detectron2": detectron2.__version__,
            "numpy": np.__version__,
        },
        "class_names": list(provenance.class_names),
        "teacher": {
            "config_path": provenance.teacher_config_path,
            "config_sha256": hashlib.sha256(config_text.encode("utf-8")).hexdigest()
            if config_text
            else "",
            "config_text": config_text,
            "weights_path": provenance.teacher_weights_path,
            "weights_sha256": provenance.teacher_weights_sha256,
        },
        "listing": {
            "path": provenance.listing_path,
            "sha256": provenance.listing_sha256,
            "size": provenance.listing_size,
        },
        "image_root": provenance.image_root,
        "score_floor": float(score_floor),
        "counts": {
            "images": int(num_images),
            "boxes": int(num_boxes),
            "failed_images": len(failed_images),
        },
        "failed_images": failed_images,
    }


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a store's metadata.json.

    Args:
        path: the store directory.

    Returns:
        The metadata dict (see the module docstring and :func:`merge_shards`).

    Raises:
        PseudoLabelStoreError: when the metadata is missing, unreadable or of another format.
    """
    path = os.fspath(path)
    meta_path = os.path.join(path, METADATA_FILE)
    try:
        with open(meta_path) as f:
            metadata = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PseudoLabelStoreError(
            f"incomplete or not a pseudo-label store: {path} (cannot read {METADATA_FILE}: {e}). "
            "A store is complete only once merge_shards/import_coco_json has finished."
        ) from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise PseudoLabelStoreError(
            f"incomplete or not a pseudo-label store: {path} ({METADATA_FILE} is not of format "
            f"{FORMAT_NAME!r})"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise PseudoLabelStoreError(
            f"pseudo-label store {path} has format version {metadata.get('format_version')}; this "
            f"ssdet reads version {FORMAT_VERSION}"
        )
    return metadata


# -------------------------------------------------------------------------------------------------
# Writing: the store builder, shards, merge
# -------------------------------------------------------------------------------------------------


class _StoreBuilder:
    """Builds a store in a temporary sibling directory and renames it into place on commit."""

    def __init__(self, output_dir: str | os.PathLike, overwrite: bool):
        self.output_dir = os.path.abspath(os.fspath(output_dir))
        self._overwrite = overwrite
        if os.path.exists(self.output_dir) and not overwrite:
            raise FileExistsError(f"{self.output_dir} exists; pass overwrite=True to replace it")
        parent, name = os.path.split(self.output_dir)
        os.makedirs(parent, exist_ok=True)
        self.tmp_dir = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
        self._memmaps: list[np.memmap] = []

    def __enter__(self) -> _StoreBuilder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._memmaps.clear()
        if os.path.isdir(self.tmp_dir):
            shutil.rmtree(self.tmp_dir)

    def save(self, name: str, array: np.ndarray) -> None:
        np.save(os.path.join(self.tmp_dir, name + ".npy"), np.ascontiguousarray(array))

    def column(self, name: str, shape: tuple[int, ...], dtype: type) -> np.memmap:
        """A writable memory-mapped column, so a merge never holds the whole store in memory."""
        array = np.lib.format.open_memmap(
            os.path.join(self.tmp_dir, name + ".npy"), mode="w+", dtype=dtype, shape=shape
        )
        self._memmaps.append(array)
        return array

    def commit(self, metadata: dict[str, Any]) -> None:
        for array in self._memmaps:
            array.flush()
        self._memmaps.clear()
        for name in os.listdir(self.tmp_dir):
            fd = os.open(os.path.join(self.tmp_dir, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        # The metadata is the commit marker inside the directory, so it is written last.
        atomic_write_json(os.path.join(self.tmp_dir, METADATA_FILE), metadata)
        # mkdtemp creates an owner-only directory; a store is read by other jobs and users.
        os.chmod(self.tmp_dir, 0o755)
        if os.path.exists(self.output_dir):
            if not self._overwrite:
                raise FileExistsError(f"{self.output_dir} appeared while the store was built")
            # rename(2) cannot replace a non-empty directory: move the old store aside first.
            # Readers see the old store, then briefly none, then the new one; never a partial one.
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(self.output_dir)}.",
                suffix=".old",
                dir=os.path.dirname(self.output_dir),
            )
            os.replace(self.output_dir, os.path.join(old, "store"))
            os.replace(self.tmp_dir, self.output_dir)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp_dir, self.output_dir)
        fd = os.open(os.path.dirname(self.output_dir), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class PseudoLabelShardWriter:
    """Accumulates one rank's pseudo labels and writes them as one shard file (``.npz``, no pickle).

    Detections below ``score_floor`` are dropped; the rest are kept sorted by descending score
    (stable), so the student's filter can pick thresholds later without a second teacher pass.
    For resumable labeling, use one writer per chunk of the listing and skip chunks whose shard file
    exists: shards appear atomically, whole or not at all.

    Args:
        path: the shard file to write (``.npz``).
        num_classes: number of teacher classes; class ids must be in ``[0, num_classes)``.
        score_floor: lowest score kept (``SSDET.PSEUDO_LABELS.LABELING_SCORE_FLOOR``).
    """

    def __init__(self, path: str | os.PathLike, num_classes: int, score_floor: float = 0.05):
        self.path = os.fspath(path)
        self.num_classes = int(num_classes)
        self.score_floor = float(score_floor)
        self._indices: list[int] = []
        self._file_names: list[str] = []
        self._heights: list[int] = []
        self._widths: list[int] = []
        self._boxes: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._failed_indices: list[int] = []
        self._failed_names: list[str] = []
        self._failed_reasons: list[str] = []

    def __len__(self) -> int:
        """Number of images recorded, labeled or failed."""
        return len(self._indices) + len(self._failed_indices)

    def add(
        self,
        index: int,
        file_name: str,
        height: int,
        width: int,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
    ) -> None:
        """Record the teacher's detections on one image.

        Args:
            index: the image's index in the input listing (defines the store's order).
            file_name: the image's path, as the student's data loader will read it.
            height, width: the image size in pixels (0 when unknown).
            boxes: float (K, 4) XYXY absolute pixels.
            scores: float (K,).
            classes: int (K,) contiguous class ids.
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        classes = np.asarray(classes).reshape(-1)
        if not len(boxes) == len(scores) == len(classes):
            raise ValueError(
                f"{file_name}: {len(boxes)} boxes, {len(scores)} scores and {len(classes)} classes"
            )
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"{file_name}: class ids outside [0, {self.num_classes})")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"{file_name}: non-finite boxes or scores")
        keep = np.flatnonzero(scores >= np.float32(self.score_floor))
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        self._indices.append(int(index))
        self._file_names.append(file_name)
        self._heights.append(int(height))
        self._widths.append(int(width))
        self._boxes.append(boxes[keep])
        self._scores.append(scores[keep])
        self._classes.append(classes[keep].astype(np.int32))

    def add_instances(self, index: int, file_name: str, instances: Instances) -> None:
        """Record a Detectron2 model output (``outputs[i]["instances"]``) for one image.

        Args:
            index: the image's index in the input listing.
            file_name: the image's path.
            instances: with ``pred_boxes``, ``scores``, ``pred_classes``; ``image_size`` is (h, w).
        """
        height, width = instances.image_size
        self.add(
            index,
            file_name,
            height,
            width,
            instances.pred_boxes.tensor.detach().cpu().numpy(),
            instances.scores.detach().cpu().numpy(),
            instances.pred_classes.detach().cpu().numpy(),
        )

    def add_failure(self, index: int, file_name: str, reason: str) -> None:
        """Record an image the teacher could not label (unreadable file, ...)."""
        self._failed_indices.append(int(index))
        self._failed_names.append(file_name)
        self._failed_reasons.append(reason)

    def write(self) -> str:
        """Write the shard atomically and return its path."""
        name_bytes, name_offsets = _encode_strings(self._file_names)
        failed_name_bytes, failed_name_offsets = _encode_strings(self._failed_names)
        reason_bytes, reason_offsets = _encode_strings(self._failed_reasons)
        counts = np.array([len(s) for s in self._scores], dtype=np.int64)
        arrays = {
            "format_version": np.array(SHARD_FORMAT_VERSION, dtype=np.int64),
            "num_classes": np.array(self.num_classes, dtype=np.int64),
            "score_floor": np.array(self.score_floor, dtype=np.float64),
            "indices": np.array(self._indices, dtype=np.int64),
            "heights": np.array(self._heights, dtype=np.int32),
            "widths": np.array(self._widths, dtype=np.int32),
            "file_name_bytes": name_bytes,
            "file_name_offsets": name_offsets,
            "box_offsets": _offsets_from_counts(counts),
            "boxes": np.concatenate(self._boxes or [np.zeros((0, 4), np.float32)]),
            "scores": np.concatenate(self._scores or [np.zeros(0, np.float32)]),
            "classes": np.concatenate(self._classes or [np.zeros(0, np.int32)]),
            "failed_indices": np.array(self._failed_indices, dtype=np.int64),
            "failed_name_bytes": failed_name_bytes,
            "failed_name_offsets": failed_name_offsets,
            "failed_reason_bytes": reason_bytes,
            "failed_reason_offsets": reason_offsets,
        }
        with atomic_open(self.path, "wb") as f:
            np.savez(f, **arrays)
        return self.path


@dataclass
class _ShardIndex:
    """The small per-image arrays of one shard, read in the merge's first pass."""

    path: str
    indices: np.ndarray
    box_counts: np.ndarray
    name_lengths: np.ndarray
    num_classes: int
    score_floor: float
    failed: list[dict[str, Any]]

    @classmethod
    def read(cls, path: str) -> _ShardIndex:
        with np.load(path) as z:
            version = int(z["format_version"]) if "format_version" in z.files else None
            if version != SHARD_FORMAT_VERSION:
                raise InputError(
                    f"{path} is not a pseudo-label shard of version {SHARD_FORMAT_VERSION}"
                )
            failed_names = _decode_strings(z["failed_name_bytes"], z["failed_name_offsets"])
            reasons = _decode_strings(z["failed_reason_bytes"], z["failed_reason_offsets"])
            failed = [
                {"index": i, "file_name": n, "reason": r}
                for i, n, r in zip(z["failed_indices"].tolist(), failed_names, reasons, strict=True)
            ]
            return cls(
                path=path,
                indices=z["indices"],
                box_counts=np.diff(z["box_offsets"]),
                name_lengths=np.diff(z["file_name_offsets"]),
                num_classes=int(z["num_classes"]),
                score_floor=float(z["score_floor"]),
                failed=failed,
            )


def merge_shards(
    shard_paths: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    provenance: LabelingProvenance,
    *,
    overwrite: bool = False,
) -> PseudoLabelStore:
    """Merge labeling shards into one store, in the listing's order, atomically.

    Images are ordered by their listing index, so the store is byte-identical (but for the creation
    time in metadata.json) however many ranks produced it and in whatever order they finished. The
    merge streams: it holds one shard and the per-image index arrays in memory, not the store.

    Args:
        shard_paths: files written by :meth:`PseudoLabelShardWriter.write`.
        output_dir: the store directory to create.
        provenance: the labeling run's provenance; ``class_names`` must match the shards.
        overwrite: replace an existing store at ``output_dir``.

    Returns:
        The merged store, opened.

    Raises:
        InputError: shards disagree (score floor, class count), an image appears twice, or
            (with ``provenance.listing_size``) listing images are missing.
    """
    shards = [_ShardIndex.read(os.fspath(p)) for p in shard_paths]
    if not shards:
        raise InputError("merge_shards needs at least one shard")
    floors = sorted({s.score_floor for s in shards})
    if len(floors) > 1:
        raise InputError(f"shards were labeled with different score floors: {floors}")
    num_classes = len(provenance.class_names)
    for s in shards:
        if s.num_classes != num_classes:
            raise InputError(
                f"{s.path} has {s.num_classes} classes; the provenance names {num_classes}"
            )

    indices = np.concatenate([s.indices for s in shards])
    failed = sorted((f for s in shards for f in s.failed), key=lambda f: f["index"])
    everything = np.concatenate([indices, np.array([f["index"] for f in failed], np.int64)])
    seen, times = np.unique(everything, return_counts=True)
    if (times > 1).any():
        raise InputError(
            f"{int((times > 1).sum())} images appear in more than one shard record (listing "
            f"indices {seen[times > 1][:10].tolist()}...): pass each shard once"
        )
    if provenance.listing_size is not None:
        size = provenance.listing_size
        missing = np.setdiff1d(np.arange(size, dtype=np.int64), seen, assume_unique=True)
        outside = seen[(seen < 0) | (seen >= size)]
        if missing.size or outside.size:
            raise InputError(
                f"shards do not cover the listing of {size} images exactly: {missing.size} "
                f"missing (first {missing[:10].tolist()}), {outside.size} outside it (first "
                f"{outside[:10].tolist()}); did a rank not finish, or do the shards come from "
                "another listing?"
            )

    order = np.argsort(indices, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    image_offsets = _offsets_from_counts(np.concatenate([s.box_counts for s in shards])[order])
    name_offsets = _offsets_from_counts(np.concatenate([s.name_lengths for s in shards])[order])
    n, m = len(indices), int(image_offsets[-1])

    with _StoreBuilder(output_dir, overwrite) as builder:
        builder.save("image_offsets", image_offsets)
        builder.save("image_ids", indices[order])
        builder.save("file_name_offsets", name_offsets)
        heights = builder.column("heights", (n,), np.int32)
        widths = builder.column("widths", (n,), np.int32)
        name_bytes = builder.column("file_name_bytes", (int(name_offsets[-1]),), np.uint8)
        boxes = builder.column("boxes", (m, 4), np.float32)
        scores = builder.column("scores", (m,), np.float32)
        classes = builder.column("classes", (m,), _class_dtype(num_classes))
        start = 0
        for shard in shards:
            pos = position[start : start + len(shard.indices)]
            start += len(shard.indices)
            with np.load(shard.path) as z:
                heights[pos] = z["heights"]
                widths[pos] = z["widths"]
                rows = _gather_ranges(image_offsets[pos], shard.box_counts)
                boxes[rows] = z["boxes"]
                scores[rows] = z["scores"]
                classes[rows] = z["classes"]
                name_bytes[_gather_ranges(name_offsets[pos], shard.name_lengths)] = z[
                    "file_name_bytes"
                ]
        builder.commit(
            _build_metadata(
                provenance,
                source="merge_shards",
                score_floor=floors[0],
                num_images=n,
                num_boxes=m,
                failed_images=failed,
            )
        )
    logger.info(
        "Merged %d shards into %s: %d images, %d boxes, %d failed images",
        len(shards),
        builder.output_dir,
        n,
        m,
        len(failed),
    )
    return PseudoLabelStore.open(builder.output_dir)


# -------------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------------


class ColumnReader:
    """Reads rows of a store's columns with ``pread``, without mapping them into this process.

    Random access through a memory map leaves every touched page, and the kernel's fault-around
    window of neighbouring pages, resident in the process: after an epoch of random indices each
    DataLoader worker holds most of the store in its RSS. ``pread`` copies only the requested
    bytes; the file's pages stay in the page cache, shared by every process and reclaimable, and
    count in no process's memory. File descriptors are opened on first use in each process, so a
    reader can be pickled or forked before it is used.

    Args:
        files: column name -> (path of its ``.npy`` file, byte offset of its data).
        arrays: column name -> the (mapped) array, for dtypes and row shapes only.
    """

    def __init__(self, files: Mapping[str, tuple[str, int]], arrays: Mapping[str, np.ndarray]):
        self._files = dict(files)
        # Column -> (dtype, shape of one row, bytes per row).
        self._layout = {
            name: (a.dtype, a.shape[1:], a.dtype.itemsize * math.prod(a.shape[1:]))
            for name, a in arrays.items()
        }
        self._handles: dict[str, tuple[int, int, int, np.dtype]] = {}
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}, "_pid": -1}

    def _open(self) -> dict[str, tuple[int, int, int, np.dtype]]:
        """Column -> (file descriptor, data offset, bytes per row, dtype), for this process."""
        if self._pid != os.getpid():
            # Descriptors inherited through fork would work too (pread has no file position), but
            # a process that opens its own owns their lifetime.
            self._handles, self._pid = {}, os.getpid()
            for name, (path, offset) in self._files.items():
                dtype, _, row_bytes = self._layout[name]
                self._handles[name] = (os.open(path, os.O_RDONLY), offset, row_bytes, dtype)
        return self._handles

    def raw(self, name: str, start: int, stop: int) -> bytes:
        """The bytes of rows ``[start, stop)`` of column ``name``."""
        fd, offset, row_bytes, _ = self._open()[name]
        size = max(stop - start, 0) * row_bytes
        data = os.pread(fd, size, offset + start * row_bytes)
        if len(data) != size:
            raise PseudoLabelStoreError(
                f"short read of {name}.npy ({len(data)} of {size} bytes at row {start}): the "
                "pseudo-label store changed or was truncated while in use"
            )
        return data

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of column ``name``, as a new read-only array."""
        dtype, row_shape, _ = self._layout[name]
        array = np.frombuffer(self.raw(name, start, stop), dtype=dtype)
        # reshape costs a microsecond per call: only for the 2-D boxes.
        return array.reshape(-1, *row_shape) if row_shape else array

    def close(self) -> None:
        for fd, *_ in self._handles.values():
            os.close(fd)
        self._handles = {}

    def __del__(self) -> None:
        if self._pid == os.getpid():
            self.close()


class PseudoLabelStore:
    """A read-only, memory-mapped pseudo-label store. Open with :meth:`open`.

    The arrays are read-only views of the memory-mapped files (module docstring: shapes and
    dtypes): pages are read on first touch and shared by every process that maps them, so
    DataLoader workers add no copies. Only a few scalars and the class names are Python objects.

    Attributes:
        path: the store directory.
        class_names: list[str] in contiguous class-id order.
        score_floor: the lowest score the teacher's labels were kept at.
        image_root: directory that relative file names are resolved against ("" = none).
        image_offsets, image_ids, heights, widths, file_name_offsets, file_name_bytes, boxes,
        scores, classes: the columns.
    """

    image_offsets: np.ndarray
    image_ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    file_name_offsets: np.ndarray
    file_name_bytes: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __init__(self, path: str, metadata: dict[str, Any], columns: dict[str, np.memmap]):
        self.path = path
        self.class_names: list[str] = list(metadata["class_names"])
        self.score_floor = float(metadata["score_floor"])
        self.image_root = str(metadata.get("image_root") or "")
        for name, array in columns.items():
            # A plain ndarray view of the same mapping: np.memmap's subclass hooks cost
            # microseconds on every small index operation.
            setattr(self, name, np.asarray(array))
        # Where each column's data starts in its file (after the .npy header), for ColumnReader;
        # and the mappings themselves, for release_pages.
        self._column_files = {
            name: (array.filename, int(array.offset)) for name, array in columns.items()
        }
        self._mmaps = [array._mmap for array in columns.values() if array._mmap is not None]

    @classmethod
    def open(cls, path: str | os.PathLike) -> PseudoLabelStore:
        """Open a store: read metadata.json and memory-map the columns (no data is read).

        Raises:
            PseudoLabelStoreError: "incomplete or not a pseudo-label store: ..." when the metadata
                or a column is missing or inconsistent.
        """
        path = os.path.abspath(os.fspath(path))
        metadata = read_metadata(path)

        def fail(why: str) -> PseudoLabelStoreError:
            return PseudoLabelStoreError(f"incomplete or not a pseudo-label store: {path} ({why})")

        columns = {}
        for name, (dtypes, ndim) in _COLUMNS.items():
            try:
                array = np.load(os.path.join(path, name + ".npy"), mmap_mode="r")
            except (OSError, ValueError) as e:
                raise fail(f"cannot map {name}.npy: {e}") from e
            if array.dtype.type not in dtypes or array.ndim != ndim:
                raise fail(f"{name}.npy has dtype {array.dtype} and {array.ndim} dims")
            columns[name] = array
        try:
            n, m = int(metadata["counts"]["images"]), int(metadata["counts"]["boxes"])
        except (KeyError, TypeError, ValueError) as e:
            raise fail(f"{METADATA_FILE} lacks the image and box counts: {e!r}") from e
        offsets = columns["image_offsets"]
        expected = {
            "image_offsets": (n + 1,),
            "image_ids": (n,),
            "heights": (n,),
            "widths": (n,),
            "file_name_offsets": (n + 1,),
            "boxes": (m, 4),
            "scores": (m,),
            "classes": (m,),
        }
        for name, shape in expected.items():
            if columns[name].shape != shape:
                raise fail(f"{name}.npy has shape {columns[name].shape}, expected {shape}")
        if offsets[0] != 0 or offsets[-1] != m:
            raise fail("image_offsets do not span the boxes")
        if columns["file_name_offsets"][-1] != len(columns["file_name_bytes"]):
            raise fail("file_name_offsets do not span file_name_bytes")
        return cls(path, metadata, columns)

    def release_pages(self) -> None:
        """Unmap the pages this process has touched in the columns (they stay in the page cache).

        A vectorized filter reads whole columns through the mappings, which leaves them resident
        in this process; a dataset that reads items with :class:`ColumnReader` no longer needs
        them. The arrays stay valid: a later access faults its pages in again.
        """
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None:  # not Linux/BSD: nothing to release
            return
        for mapping in self._mmaps:
            mapping.madvise(advice)

    def reader(self) -> ColumnReader:
        """A :class:`ColumnReader` of this store's columns."""
        return ColumnReader(self._column_files, {n: getattr(self, n) for n in _COLUMNS})

    def __reduce__(self):
        # Pickled (spawned DataLoader workers) as its path: the child maps the same files instead of
        # receiving a copy of the arrays.
        return (PseudoLabelStore.open, (self.path,))

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_boxes(self) -> int:
        return len(self.scores)

    @property
    def metadata(self) -> dict[str, Any]:
        """The full metadata.json, read from disk (not kept: it can list many failures)."""
        return read_metadata(self.path)

    def file_name(self, i: int) -> str:
        """The path of image ``i``, joined to ``image_root`` when it is relative."""
        name = self.stored_file_name(i)
        return os.path.join(self.image_root, name) if self.image_root else name

    def stored_file_name(self, i: int) -> str:
        """The path of image ``i`` as stored (not joined to ``image_root``)."""
        start, end = self.file_name_offsets[i : i + 2].tolist()
        return self.file_name_bytes[start:end].tobytes().decode("utf-8")


# -------------------------------------------------------------------------------------------------
# The student's filter
# -------------------------------------------------------------------------------------------------


@dataclass
class PseudoLabelSelection:
    """The filter's result: index arrays into a store, no per-image Python objects.

    Attributes:
        store: the base store.
        image_index: int64 (K,) the base image of each dataset item, ascending; repeated indices are
            class-balancing duplicates.
        box_offsets: int64 (N+1,) kept boxes of base image i are
            ``box_rows[box_offsets[i]:box_offsets[i+1]]``.
        box_rows: int32 or int64 (B,) rows into ``store.boxes/scores/classes``, grouped by image and
            score-descending within one.
        image_classes: int32 (N,) class of each base image's highest-scoring kept box; -1 if none.
        pseudo_filter: the filter that produced this selection.
        ignore_offsets, ignore_rows: the ignore regions of each base image, laid out as
            ``box_offsets`` / ``box_rows``; None when the filter has no ``ignore_score_thresh``.
    """

    store: PseudoLabelStore
    image_index: np.ndarray
    box_offsets: np.ndarray
    box_rows: np.ndarray
    image_classes: np.ndarray
    pseudo_filter: PseudoLabelFilter
    ignore_offsets: np.ndarray | None = None
    ignore_rows: np.ndarray | None = None

    @property
    def num_kept_boxes(self) -> int:
        return len(self.box_rows)

    def kept_boxes_per_image(self) -> np.ndarray:
        """int64 (N,) number of kept boxes of each base image (before balancing)."""
        return np.diff(self.box_offsets)


@dataclass(frozen=True)
class PseudoLabelFilter:
    """Which pseudo boxes and images the student trains on; applied when the store is loaded.

    Args:
        score_thresh: keep boxes with score >= this (the paper keeps >= 0.5).
        class_score_threshs: class (contiguous id or name) -> threshold overriding ``score_thresh``.
        max_boxes_per_image: keep at most this many top-scoring boxes per image; 0 = no limit.
        min_box_size: drop boxes whose shorter side is below this, in pixels; 0 = keep all.
        keep_empty_images: keep images left without boxes (as background-only images); they do
            not take part in class balancing and appear once each.
        balance_classes: Noisy Student's balancing. An image's class is that of its highest-scoring
            kept box; each class is brought to ``images_per_class`` images by duplicating (all
            images repeated, then a seeded draw for the remainder) or subsampling.
        images_per_class: per-class target; 0 = the mean count over classes that have images.
        balance_subsample: how classes with too many images are cut: "top_score" keeps the images
            with the highest top-box score (Noisy Student's rule), "random" a seeded draw.
        balance_seed: seed of the balancing draws; class c uses ``default_rng((seed, c))``, so
            one class's draw does not depend on the others.
        ignore_score_thresh: stored boxes that are not kept but score >= this become ignore
            regions (dataset annotations with ``category_id`` -1); 0 = none. Below every keep
            threshold.
    """

    score_thresh: float = 0.5
    class_score_threshs: Mapping[int | str, float] = field(default_factory=dict)
    max_boxes_per_image: int = 0
    min_box_size: float = 0.0
    keep_empty_images: bool = False
    balance_classes: bool = False
    images_per_class: int = 0
    balance_subsample: str = "top_score"
    balance_seed: int = 0
    ignore_score_thresh: float = 0.0

    def __post_init__(self) -> None:
        if self.balance_subsample not in BALANCE_SUBSAMPLE_RULES:
            raise InputError(
                f"Unknown class-balancing subsample rule {self.balance_subsample!r}; expected one "
                f"of {BALANCE_SUBSAMPLE_RULES}"
            )
        if self.max_boxes_per_image < 0 or self.images_per_class < 0 or self.min_box_size < 0:
            raise InputError(
                "max_boxes_per_image, images_per_class and min_box_size must be >= 0 "
                "(0 disables them)"
            )
        keep_min = min([self.score_thresh, *self.class_score_threshs.values()])
        if self.ignore_score_thresh < 0 or 0 < keep_min <= self.ignore_score_thresh:
            raise InputError(
                f"SSDET.PSEUDO_LABELS.IGNORE_SCORE_THRESH {self.ignore_score_thresh} must be >= 0 "
                f"and below the lowest keep threshold {keep_min} (0 disables ignore regions)"
            )

    @classmethod
    def from_config(cls, cfg) -> PseudoLabelFilter:
        """Build the filter from ``cfg.SSDET.PSEUDO_LABELS`` (see ``ssdet/config.py``)."""
        c = cfg.SSDET.PSEUDO_LABELS
        class_threshs = {}
        for pair in c.CLASS_SCORE_THRESHS:
            if len(pair) != 2:
                raise InputError(
                    "SSDET.PSEUDO_LABELS.CLASS_SCORE_THRESHS takes [class name or id, threshold] "
                    f"pairs, got {pair!r}"
                )
            class_threshs[pair[0]] = float(pair[1])
        return cls(
            score_thresh=c.SCORE_THRESH,
            class_score_threshs=class_threshs,
            max_boxes_per_image=c.MAX_BOXES_PER_IMAGE,
            min_box_size=c.MIN_BOX_SIZE,
            keep_empty_images=c.KEEP_EMPTY_IMAGES,
            balance_classes=c.BALANCE_CLASSES,
            images_per_class=c.IMAGES_PER_CLASS,
            balance_subsample=c.BALANCE_SUBSAMPLE,
            balance_seed=c.BALANCE_SEED,
            ignore_score_thresh=c.IGNORE_SCORE_THRESH,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (class keys become strings), for reports."""
        settings = dataclasses.asdict(self)
        settings["class_score_threshs"] = {str(k): v for k, v in self.class_score_threshs.items()}
        return settings

    @classmethod
    def keep_all(cls) -> PseudoLabelFilter:
        """The filter that keeps every stored box (teacher scores are >= 0) and every image."""
        return cls(score_thresh=0.0, keep_empty_images=True)

    def class_thresholds(self, class_names: Sequence[str]) -> np.ndarray:
        """float32 (C,) the score threshold of each class.

        Raises:
            InputError: for a class name or id that is not in ``class_names``.
        """
        thresholds = np.full(len(class_names), self.score_thresh, dtype=np.float32)
        for key, thresh in self.class_score_threshs.items():
            if isinstance(key, str) and key in class_names:
                thresholds[class_names.index(key)] = thresh
            elif isinstance(key, int | np.integer) and 0 <= key < len(class_names):
                thresholds[key] = thresh
            else:
                raise InputError(
                    f"Unknown class {key!r} in the per-class score thresholds; the store's classes "
                    f"are ids 0..{len(class_names) - 1} named {list(class_names)[:10]}..."
                )
        return thresholds

    def apply(self, store: PseudoLabelStore) -> PseudoLabelSelection:
        """Select boxes and images from a store, vectorized over all boxes.

        Relies on the store's invariant that boxes are score-descending within each image, so an
        image's first kept box is its highest-scoring one.

        Args:
            store: the base store.

        Returns:
            The selection; also logs a warning when it is almost empty (see
            :func:`warn_if_almost_empty`).
        """
        n = store.num_images
        thresholds = self.class_thresholds(store.class_names)
        # A threshold of 0 asks for every stored box (keep_all); only one between 0 and the floor
        # suggests the user expects boxes the teacher never stored.
        if thresholds.size and 0 < thresholds.min() < store.score_floor:
            logger.warning(
                "Pseudo-label score threshold %g is below the labeling score floor %g of %s: "
                "boxes under %g were never stored, so the threshold acts as %g.",
                thresholds.min(),
                store.score_floor,
                store.path,
                store.score_floor,
                store.score_floor,
            )
        scores = np.asarray(store.scores)
        if self.class_score_threshs:
            keep = scores >= thresholds[np.asarray(store.classes)]
        else:
            keep = scores >= np.float32(self.score_thresh)
        if self.min_box_size > 0:
            boxes = np.asarray(store.boxes)
            shorter = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            keep &= shorter >= self.min_box_size
        rows = np.flatnonzero(keep)
        # Keys are ascending, which lets searchsorted reuse its last position.
        images = np.searchsorted(store.image_offsets, rows, side="right") - 1
        counts = np.bincount(images, minlength=n)
        if self.max_boxes_per_image > 0:
            rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[images]
            within = rank < self.max_boxes_per_image
            rows, images = rows[within], images[within]
            counts = np.minimum(counts, self.max_boxes_per_image)
        box_offsets = _offsets_from_counts(counts)
        box_rows = rows.astype(_row_dtype(store.num_boxes))

        labeled = np.flatnonzero(counts > 0)
        first_rows = box_rows[box_offsets[labeled]]
        image_classes = np.full(n, -1, dtype=np.int32)
        image_classes[labeled] = store.classes[first_rows]
        if self.balance_classes:
            picked = self._balance(
                labeled, image_classes[labeled], store.scores[first_rows], len(store.class_names)
            )
        else:
            picked = labeled
        if self.keep_empty_images:
            picked = np.concatenate([picked, np.flatnonzero(counts == 0)])
        ignore_offsets = ignore_rows = None
        if self.ignore_score_thresh > 0:
            ignore = scores >= np.float32(self.ignore_score_thresh)
            ignore[rows] = False
            ignore_rows = np.flatnonzero(ignore)
            ignore_images = np.searchsorted(store.image_offsets, ignore_rows, side="right") - 1
            ignore_offsets = _offsets_from_counts(np.bincount(ignore_images, minlength=n))
            ignore_rows = ignore_rows.astype(_row_dtype(store.num_boxes))
        selection = PseudoLabelSelection(
            store=store,
            image_index=np.sort(picked).astype(np.int64),
            box_offsets=box_offsets,
            box_rows=box_rows,
            image_classes=image_classes,
            pseudo_filter=self,
            ignore_offsets=ignore_offsets,
            ignore_rows=ignore_rows,
        )
        logger.info(
            "Pseudo labels %s: kept %d of %d boxes on %d of %d images; %d dataset images%s%s",
            store.path,
            len(box_rows),
            store.num_boxes,
            len(labeled),
            n,
            len(selection.image_index),
            " after class balancing" if self.balance_classes else "",
            f"; {len(ignore_rows)} ignore regions (scores >= {self.ignore_score_thresh})"
            if ignore_rows is not None
            else "",
        )
        warn_if_almost_empty(selection)
        return selection

    def _balance(
        self, images: np.ndarray, classes: np.ndarray, top_scores: np.ndarray, num_classes: int
    ) -> np.ndarray:
        """Bring every class to the target image count.

        Args:
            images: int64 (L,) base images with at least one kept box, ascending.
            classes: int32 (L,) their classes.
            top_scores: float32 (L,) their highest kept score.
            num_classes: C.

        Returns:
            int64 (C' * target,) chosen base images, duplicates included; C' = classes present.
        """
        per_class = np.bincount(classes, minlength=num_classes)
        present = np.flatnonzero(per_class)
        if present.size == 0:
            return images
        target = self.images_per_class or int(round(per_class[present].mean()))
        if present.size < num_classes:
            logger.info(
                "Class balancing: %d of %d classes have no pseudo-labeled image and stay empty",
                num_classes - present.size,
                num_classes,
            )
        if self.balance_subsample == "top_score":
            # Within a class: highest top-box score first, ties by image index.
            order = np.lexsort((images, -top_scores, classes))
        else:
            order = np.lexsort((images, classes))
        grouped = images[order]
        ends = np.cumsum(per_class)
        chosen = []
        for c in present.tolist():
            members = grouped[ends[c] - per_class[c] : ends[c]]
            rng = np.random.default_rng((self.balance_seed, c))
            if len(members) >= target:
                if self.balance_subsample == "top_score":
                    chosen.append(members[:target])
                else:
                    chosen.append(rng.choice(members, size=target, replace=False))
            else:
                repeats, remainder = divmod(target, len(members))
                chosen.append(np.tile(members, repeats))
                chosen.append(rng.choice(members, size=remainder, replace=False))
        return np.concatenate(chosen)


def is_almost_empty(
    selection: PseudoLabelSelection, min_fraction: float = ALMOST_EMPTY_FRACTION
) -> bool:
    """Whether the filter left no kept box at all, or a box on fewer than ``min_fraction`` of the
    store's images: the "no pseudo boxes" failure, where the student silently trains on labeled
    data alone."""
    num_with_box = int(np.count_nonzero(selection.kept_boxes_per_image()))
    return selection.num_kept_boxes == 0 or num_with_box < min_fraction * selection.store.num_images


def warn_if_almost_empty(
    selection: PseudoLabelSelection, min_fraction: float = ALMOST_EMPTY_FRACTION
) -> bool:
    """Log a warning naming the threshold when :func:`is_almost_empty`; return whether it did."""
    if not is_almost_empty(selection, min_fraction):
        return False
    store = selection.store
    num_with_box = int(np.count_nonzero(selection.kept_boxes_per_image()))
    fraction = num_with_box / store.num_images if store.num_images else 0.0
    pseudo_filter = selection.pseudo_filter
    per_class = (
        f" (per-class overrides {dict(pseudo_filter.class_score_threshs)})"
        if pseudo_filter.class_score_threshs
        else ""
    )
    highest = f"{float(np.max(store.scores)):.3f}" if store.num_boxes else "none: no stored boxes"
    logger.warning(
        "Almost no pseudo boxes: the filter kept %d boxes on %d of %d images (%.2f%%, below "
        "%.0f%%) "
        "of %s at SSDET.PSEUDO_LABELS.SCORE_THRESH=%g%s, MIN_BOX_SIZE=%g. The student would train "
        "on (almost) no pseudo labels. Lower SSDET.PSEUDO_LABELS.SCORE_THRESH (the teacher's "
        "highest stored score is %s) or check the teacher: its weights, its classes, and that it "
        "sees the images it should.",
        selection.num_kept_boxes,
        num_with_box,
        store.num_images,
        100 * fraction,
        100 * min_fraction,
        store.path,
        pseudo_filter.score_thresh,
        per_class,
        pseudo_filter.min_box_size,
        highest,
    )
    return True


# -------------------------------------------------------------------------------------------------
# Detectron2 dataset
# -------------------------------------------------------------------------------------------------


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


# -------------------------------------------------------------------------------------------------
# COCO JSON export and import
# -------------------------------------------------------------------------------------------------


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
    rows = selection.box_rows[_gather_ranges(selection.box_offsets[images], counts)]
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
    name_bytes, name_offsets = _encode_strings([im["file_name"] for im in images])

    provenance = LabelingProvenance(
        class_names=class_names,
        listing_path=os.path.abspath(os.fspath(json_path)),
        listing_sha256=file_sha256(json_path),
        listing_size=len(images),
        image_root=image_root,
    )
    with _StoreBuilder(output_dir, overwrite) as builder:
        builder.save("image_offsets", _offsets_from_counts(counts))
        builder.save("image_ids", coco_ids)
        builder.save("heights", np.array([im.get("height", 0) for im in images], np.int32))
        builder.save("widths", np.array([im.get("width", 0) for im in images], np.int32))
        builder.save("file_name_offsets", name_offsets)
        builder.save("file_name_bytes", name_bytes)
        builder.save("boxes", xywh[order].astype(np.float32))
        builder.save("scores", scores[order])
        builder.save("classes", classes[order].astype(_class_dtype(len(class_names))))
        builder.commit(
            _build_metadata(
                provenance,
                source="import_coco_json",
                score_floor=0.0,
                num_images=len(images),
                num_boxes=len(scores),
                failed_images=[],
            )
        )
    return PseudoLabelStore.open(builder.output_dir)
