"""The column files of a pseudo-label store: the array helpers that build and read them, the
``pread`` reader of their rows, and the error that a damaged or incomplete store raises."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssdet.utils.errors import InputError

__all__ = [
    "ColumnReader",
    "PseudoLabelStoreError",
    "class_dtype",
    "decode_strings",
    "encode_strings",
    "gather_ranges",
    "offsets_from_counts",
]


class PseudoLabelStoreError(InputError):
    """Raised for a directory that is not a complete, sound pseudo-label store."""


def encode_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 encode strings into one uint8 blob and int64 offsets of shape (len + 1,)."""
    encoded = [s.encode("utf-8") for s in strings]
    offsets = offsets_from_counts([len(b) for b in encoded])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def decode_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The strings of :func:`encode_strings`'s blob and offsets."""
    data = blob.tobytes()
    return [
        data[a:b].decode("utf-8")
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
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


def offsets_from_counts(counts: np.ndarray | Sequence[int]) -> np.ndarray:
    """int64 (len(counts) + 1,) the offsets of consecutive groups of ``counts`` items, from 0."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def class_dtype(num_classes: int) -> type:
    """The dtype of the ``classes`` column: int16 when the class ids fit in it."""
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


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
