"""Labeling's output: one shard file per rank (or chunk), and the merge of shards into a store.

Each rank fills a :class:`PseudoLabelShardWriter` with every detection above a low score floor and
writes one ``.npz`` shard; :func:`merge_shards` joins the shards into a
:class:`~ssdet.data.pseudo_labels.store.PseudoLabelStore`, in the listing's order, streaming one
shard at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from detectron2.structures import Instances

from ssdet.data.pseudo_labels.store import (
    LabelingProvenance,
    PseudoLabelStore,
    StoreBuilder,
    build_metadata,
    class_dtype,
    decode_strings,
    encode_strings,
    gather_ranges,
    offsets_from_counts,
)
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open

__all__ = ["SHARD_FORMAT_VERSION", "PseudoLabelShardWriter", "check_shard", "merge_shards"]

logger = logging.getLogger(__name__)

SHARD_FORMAT_VERSION = 1

# What reading a damaged .npz raises: a truncated or overwritten zip, a CRC-32 that does not match
# (checked as a member is read to its end), a member that is no .npy array or is missing.
_DAMAGE_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


class PseudoLabelShardWriter:
    """Accumulates one rank's pseudo labels and writes them as one shard file (``.npz``, no pickle).

    Detections below ``score_floor`` are dropped; the rest are kept sorted by descending score
    (stable), so the student's filter can pick thresholds later without a second teacher pass.
    For resumable labeling, use one writer per chunk of the listing and skip chunks whose shard file
    exists: shards appear atomically, whole or not at all.

    Args:
        path: the shard file to write (``.npz``).
        num_classes: number of teacher classes; class ids must be in ``[0, num_classes)``.
        score_floor: lowest score kept (``SSDET.LABELING.SCORE_FLOOR``).
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
        name_bytes, name_offsets = encode_strings(self._file_names)
        failed_name_bytes, failed_name_offsets = encode_strings(self._failed_names)
        reason_bytes, reason_offsets = encode_strings(self._failed_reasons)
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
            "box_offsets": offsets_from_counts(counts),
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
        with _reading_shard(path), np.load(path) as z:
            version = int(z["format_version"]) if "format_version" in z.files else None
            if version != SHARD_FORMAT_VERSION:
                raise InputError(
                    f"{path} is not a pseudo-label shard of version {SHARD_FORMAT_VERSION}"
                )
            failed_names = decode_strings(z["failed_name_bytes"], z["failed_name_offsets"])
            reasons = decode_strings(z["failed_reason_bytes"], z["failed_reason_offsets"])
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


@contextlib.contextmanager
def _reading_shard(path: str) -> Iterator[None]:
    """Turn the errors of reading a damaged shard into one :class:`InputError` with the fix."""
    try:
        yield
    except InputError:
        raise
    except _DAMAGE_ERRORS as e:
        raise InputError(
            f"pseudo-label shard {path} is damaged ({type(e).__name__}: {e}). Delete it and run "
            "tools/pseudo_label.py --resume again: the chunk of that shard is labeled again."
        ) from e


def check_shard(path: str | os.PathLike) -> None:
    """Read a shard whole, so that its zip CRC-32s are checked, as :func:`merge_shards` will.

    Raises:
        InputError: the shard is damaged (naming it and the fix) or of another version.
    """
    path = os.fspath(path)
    _ShardIndex.read(path)
    with _reading_shard(path), np.load(path) as z:
        for name in z.files:
            z[name]


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
        InputError: a shard is damaged (its zip CRC-32s are checked as it is read), shards
            disagree (score floor, class count), an image appears twice, (with
            ``provenance.listing_size``) listing images are missing, or the merged columns have
            bad values (checked, as the store's checksums are recorded, before it is published).
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
    image_offsets = offsets_from_counts(np.concatenate([s.box_counts for s in shards])[order])
    name_offsets = offsets_from_counts(np.concatenate([s.name_lengths for s in shards])[order])
    n, m = len(indices), int(image_offsets[-1])

    with StoreBuilder(output_dir, overwrite) as builder:
        builder.save("image_offsets", image_offsets)
        builder.save("image_ids", indices[order])
        builder.save("file_name_offsets", name_offsets)
        heights = builder.column("heights", (n,), np.int32)
        widths = builder.column("widths", (n,), np.int32)
        name_bytes = builder.column("file_name_bytes", (int(name_offsets[-1]),), np.uint8)
        boxes = builder.column("boxes", (m, 4), np.float32)
        scores = builder.column("scores", (m,), np.float32)
        classes = builder.column("classes", (m,), class_dtype(num_classes))
        start = 0
        for shard in shards:
            pos = position[start : start + len(shard.indices)]
            start += len(shard.indices)
            with _reading_shard(shard.path), np.load(shard.path) as z:
                heights[pos] = z["heights"]
                widths[pos] = z["widths"]
                rows = gather_ranges(image_offsets[pos], shard.box_counts)
                boxes[rows] = z["boxes"]
                scores[rows] = z["scores"]
                classes[rows] = z["classes"]
                name_bytes[gather_ranges(name_offsets[pos], shard.name_lengths)] = z[
                    "file_name_bytes"
                ]
        store = builder.commit(
            build_metadata(
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
    return store
