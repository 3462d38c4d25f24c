"""The pseudo-label store: its on-disk format, its metadata, how it is built and how it is read.

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
- ``metadata.json``     provenance, counts and the SHA-256 of every column file
  (``column_sha256``), written last: a directory without a valid one is refused. The whole
  directory is built under a temporary name and renamed into place.

Opening a store checks its columns' dtypes, shapes and values
(:func:`~ssdet.data.pseudo_labels.integrity.find_problems`: finite, ordered boxes, class ids in
range, unique image ids, ...), not their checksums, which need every byte read:
:func:`verify_store` (``tools/pseudo_label.py --verify STORE``) checks both. A store is checked
the same way before it is published, so a build never leaves a store that does not open.

Here: the format constants, :class:`LabelingProvenance` and the metadata, the ragged-array helpers
the writers share (:func:`gather_ranges`, :func:`offsets_from_counts`, :func:`encode_strings`),
:class:`StoreBuilder` (the atomic writer used by :func:`~ssdet.data.pseudo_labels.merge_shards` and
:func:`~ssdet.data.pseudo_labels.import_coco_json`), and the readers :class:`ColumnReader` and
:class:`PseudoLabelStore`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssdet.data.pseudo_labels.columns import (
    ColumnReader,
    PseudoLabelStoreError,
    class_dtype,
    decode_strings,
    encode_strings,
    gather_ranges,
    offsets_from_counts,
)
from ssdet.data.pseudo_labels.integrity import find_problems
from ssdet.utils.io import atomic_write_json, file_sha256

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "ColumnReader",
    "LabelingProvenance",
    "PseudoLabelStore",
    "PseudoLabelStoreError",
    "StoreBuilder",
    "build_metadata",
    "class_dtype",
    "decode_strings",
    "encode_strings",
    "gather_ranges",
    "offsets_from_counts",
    "read_metadata",
    "verify_store",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "ssdet.pseudo_labels"
FORMAT_VERSION = 1
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
        teacher_weights_sha256: :func:`~ssdet.utils.io.file_sha256` of the checkpoint.
        listing_path: the file listing the unlabeled images (its entry order is the image index).
        listing_sha256: :func:`~ssdet.utils.io.file_sha256` of the listing.
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


def build_metadata(
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
# Writing: the store builder
# -------------------------------------------------------------------------------------------------


class StoreBuilder:
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

    def __enter__(self) -> StoreBuilder:
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

    def commit(self, metadata: dict[str, Any]) -> PseudoLabelStore:
        """Check the columns, record their checksums in the metadata and publish the store.

        Args:
            metadata: from :func:`build_metadata`; ``column_sha256`` is added.

        Returns:
            The published store, opened.

        Raises:
            PseudoLabelStoreError: a column has a bad shape or bad values; nothing is published.
        """
        for array in self._memmaps:
            array.flush()
        self._memmaps.clear()
        # Checked before the store appears, so that a build never leaves a store that won't open.
        _check_values(
            self.output_dir,
            _map_columns(self.tmp_dir, metadata, shown_as=self.output_dir),
            metadata,
            building=True,
        )
        for name in os.listdir(self.tmp_dir):
            fd = os.open(os.path.join(self.tmp_dir, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        checksums = {n: file_sha256(os.path.join(self.tmp_dir, n + ".npy")) for n in _COLUMNS}
        metadata = {**metadata, "column_sha256": checksums}
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
        return PseudoLabelStore._reopen(self.output_dir)


# -------------------------------------------------------------------------------------------------
# Checking
# -------------------------------------------------------------------------------------------------

# How to replace a damaged store: the labeling run keeps its shards.
_REBUILD_ADVICE = (
    "Rebuild it: tools/pseudo_label.py --resume with the labeling run's --output merges its shards "
    "again (or label again)."
)


def _map_columns(
    path: str, metadata: dict[str, Any], shown_as: str | None = None
) -> dict[str, np.memmap]:
    """Memory-map a store's columns and check their dtypes and shapes against the metadata.

    Args:
        path: the directory holding the columns.
        metadata: the store's metadata.
        shown_as: the store's name in messages (default ``path``).

    Raises:
        PseudoLabelStoreError: "incomplete or not a pseudo-label store: ...".
    """

    def fail(why: str) -> PseudoLabelStoreError:
        return PseudoLabelStoreError(
            f"incomplete or not a pseudo-label store: {shown_as or path} ({why})"
        )

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
        counts = metadata["counts"]
        n, m = int(counts["images"]), int(counts["boxes"])
        num_failed = int(counts["failed_images"])
        class_names = list(metadata["class_names"])
        float(metadata["score_floor"])  # PseudoLabelStore reads it
    except (KeyError, TypeError, ValueError) as e:
        raise fail(f"{METADATA_FILE} lacks the counts, class names or score floor: {e!r}") from e
    if not all(isinstance(c, str) for c in class_names):
        raise fail(f"{METADATA_FILE} has class names that are not strings")
    if num_failed != len(metadata.get("failed_images") or []):
        raise fail(
            f"{METADATA_FILE} counts {num_failed} failed images but lists "
            f"{len(metadata.get('failed_images') or [])}"
        )
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
    offsets = columns["image_offsets"]
    if offsets[0] != 0 or offsets[-1] != m:
        raise fail(f"image_offsets run from {offsets[0]} to {offsets[-1]}, not over the {m} boxes")
    name_offsets, num_bytes = columns["file_name_offsets"], len(columns["file_name_bytes"])
    if name_offsets[0] != 0 or name_offsets[-1] != num_bytes:
        raise fail(
            f"file_name_offsets run from {name_offsets[0]} to {name_offsets[-1]}, not over the "
            f"{num_bytes} bytes of file_name_bytes"
        )
    return columns


def _check_values(
    path: str, columns: dict[str, np.memmap], metadata: dict[str, Any], building: bool = False
) -> None:
    """Raise :class:`PseudoLabelStoreError` naming every bad value of the mapped columns.

    Args:
        path: the store, as named in the message.
        columns: from :func:`_map_columns`.
        metadata: the store's metadata.
        building: the store is not published yet (its input is at fault, not the store).
    """
    reader = ColumnReader({n: (a.filename, int(a.offset)) for n, a in columns.items()}, columns)
    try:
        problems = find_problems(columns, len(metadata["class_names"]), reader.rows)
    finally:
        reader.close()
    if not problems:
        return
    found = "; ".join(problems)
    if building:
        raise PseudoLabelStoreError(
            f"Refusing to write pseudo-label store {path} ({metadata.get('source')}): its input "
            f"has bad values: {found}."
        )
    raise PseudoLabelStoreError(
        f"pseudo-label store {path} has bad values: {found}. The store was damaged or changed "
        f"after it was built. {_REBUILD_ADVICE}"
    )


def verify_store(path: str | os.PathLike) -> str:
    """Check a store completely: as :meth:`PseudoLabelStore.open` does, and every column file's
    SHA-256 against the ``column_sha256`` recorded in metadata.json when it was built.

    Reads every byte of the store (about 0.2 s per 300 MB at SHA-256's speed). A store built before
    ssdet recorded checksums gets the other checks only, and the summary says so.

    Args:
        path: the store directory.

    Returns:
        A one-line summary of what was checked.

    Raises:
        PseudoLabelStoreError: a column's bytes differ from its checksum (naming the columns), or
            anything :meth:`PseudoLabelStore.open` refuses.
    """
    path = os.path.abspath(os.fspath(path))
    metadata = read_metadata(path)
    columns = _map_columns(path, metadata)
    recorded = metadata.get("column_sha256")
    # Before the value checks: "these bytes changed" is the more precise diagnosis of a damage.
    if recorded is not None:
        changed = [
            f"{name}.npy"
            for name in _COLUMNS
            if file_sha256(os.path.join(path, name + ".npy")) != recorded.get(name)
        ]
        if changed:
            raise PseudoLabelStoreError(
                f"pseudo-label store {path} fails its checksums: {', '.join(changed)} differ from "
                f"the SHA-256 recorded in {METADATA_FILE} when it was built: the files were "
                f"changed or damaged. {_REBUILD_ADVICE}"
            )
    _check_values(path, columns, metadata)
    counts = metadata["counts"]
    summary = (
        f"{path}: {counts['images']} images, {counts['boxes']} boxes, "
        f"{counts['failed_images']} failed images; values checked"
    )
    if recorded is None:
        return summary + "; no checksums recorded (built by an older ssdet): bytes not verified"
    return summary + f"; the SHA-256 of all {len(_COLUMNS)} columns match {METADATA_FILE}"


# -------------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------------


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
        """Open a store: read metadata.json, memory-map the columns and check their values.

        The per-image columns are read whole through the maps; the per-box ones, most of a store,
        are streamed with ``pread`` (see :mod:`~ssdet.data.pseudo_labels.integrity`), so none of
        their pages stays mapped in this process. The checksums are not computed (see
        :func:`verify_store`).

        Raises:
            PseudoLabelStoreError: "incomplete or not a pseudo-label store: ..." when the metadata
                or a column is missing or has the wrong dtype or shape; "pseudo-label store ...
                has bad values: ..." naming each bad column, the count and the first bad rows.
        """
        path = os.path.abspath(os.fspath(path))
        metadata = read_metadata(path)
        columns = _map_columns(path, metadata)
        _check_values(path, columns, metadata)
        if "column_sha256" not in metadata:
            logger.info(
                "Pseudo-label store %s has no column checksums (built by an older ssdet): its "
                "values are checked, its bytes cannot be verified (tools/pseudo_label.py --verify)",
                path,
            )
        return cls(path, metadata, columns)

    @classmethod
    def _reopen(cls, path: str) -> PseudoLabelStore:
        """Map a store whose values were checked already (by its builder or in a parent process)."""
        metadata = read_metadata(path)
        return cls(path, metadata, _map_columns(path, metadata))

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
        # receiving a copy of the arrays, and does not check the values the parent checked.
        return (PseudoLabelStore._reopen, (self.path,))

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
