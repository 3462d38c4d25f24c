"""ImageNet-layout folders (``<split>/<class>/<image>``) as Detectron2 datasets.

The same listing serves as unlabeled images (the teacher's input) and as labeled classification
data (joint training, pre-training). At ImageNet scale (1.28M files) listing must neither open an
image nor hold a Python object per file, so the listing is kept as numpy arrays and cached on disk
(no pickle), keyed by the folder's path and the modification times of its class folders.
"""

import hashlib
import logging
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog

from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Bump when the cache file's layout changes, so old caches are rebuilt instead of misread.
_CACHE_VERSION = 1


def default_cache_dir() -> str:
    """Where listings are cached: ``$SSDET_CACHE_DIR``, else ``~/.cache/ssdet``."""
    return os.path.expanduser(os.getenv("SSDET_CACHE_DIR", "~/.cache/ssdet"))


class ImageFolderListing(Sequence):
    """The image files of one split folder of an ImageNet-layout dataset.

    ``listing[i]`` is a Detectron2 dataset dict ``{"file_name", "image_id", "class_id"}`` built on
    demand from numpy arrays, so the listing stays small and fork-friendly in DataLoader workers.
    Heights and widths are not known (no image is opened); Detectron2's mapper reads them.

    Args:
        root: the split folder, e.g. ``datasets/imagenet/train``; one sub-folder per class.
        cache_dir: where to cache the listing; None uses :func:`default_cache_dir`.
    """

    def __init__(self, root: str, cache_dir: str | None = None):
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise InputError(
                f"Image folder {root!r} does not exist. Expected the ImageNet layout "
                f"<split>/<class>/<image> (see datasets/README.md); for the mini world run "
                f"`python datasets/prepare_mini_world.py`."
            )
        class_dirs = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not class_dirs:
            raise InputError(f"Image folder {root!r} has no class sub-folders <class>/<image>.")
        self.class_names: list[str] = class_dirs
        self._paths, self._labels = self._load_or_list(cache_dir or default_cache_dir())
        if len(self._paths) == 0:
            raise InputError(f"Image folder {root!r} has class folders but no image files.")

    def _fingerprint(self) -> np.ndarray:
        # A class folder's mtime changes when files are added to or removed from it, so these
        # mtimes decide whether a cached listing is still valid without listing every file.
        return np.array(
            [os.stat(os.path.join(self.root, c)).st_mtime_ns for c in self.class_names],
            dtype=np.int64,
        )

    def _load_or_list(self, cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
        key = hashlib.sha1(self.root.encode()).hexdigest()[:16]
        cache_file = os.path.join(cache_dir, f"listing-v{_CACHE_VERSION}-{key}.npz")
        fingerprint = self._fingerprint()
        names = np.array([c.encode() for c in self.class_names], dtype=np.bytes_)
        if os.path.exists(cache_file):
            try:
                with np.load(cache_file) as cached:
                    if np.array_equal(cached["fingerprint"], fingerprint) and np.array_equal(
                        cached["class_names"], names
                    ):
                        return self._checked_cache(cached["paths"], cached["labels"])
            # A cache is only a shortcut: a damaged one (a truncated or overwritten file: not a
            # zip, bad CRC, missing or odd arrays) is listed again and rewritten.
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                logger.warning(
                    "Ignoring unreadable listing cache %s (%s: %s); listing %s again",
                    cache_file,
                    type(e).__name__,
                    e,
                    self.root,
                )
        paths, labels = self._list_files()
        try:
            with atomic_open(cache_file, "wb") as f:
                np.savez(f, paths=paths, labels=labels, fingerprint=fingerprint, class_names=names)
        except OSError as e:  # a read-only home must not stop training
            logger.warning("Could not cache the listing of %s in %s: %s", self.root, cache_dir, e)
        return paths, labels

    def _checked_cache(
        self, paths: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cached arrays, if they have the layout :meth:`_list_files` gives; else ValueError."""
        if not (
            paths.ndim == 1
            and paths.dtype.kind == "S"
            and labels.shape == paths.shape
            and labels.dtype == np.int32
            and (labels.size == 0 or 0 <= labels.min() <= labels.max() < len(self.class_names))
        ):
            raise ValueError("arrays of another layout than a listing's")
        return paths, labels

    def _list_files(self) -> tuple[np.ndarray, np.ndarray]:
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.class_names):
            files = sorted(
                e.name
                for e in os.scandir(os.path.join(self.root, name))
                if e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            paths.extend(f"{name}/{f}" for f in files)
            labels.extend([label] * len(files))
        logger.info(
            "Listed %s images in %s classes of %s", len(paths), len(self.class_names), self.root
        )
        # Fixed-width bytes: one contiguous array, no per-file Python objects, no pickle.
        # UTF-8 explicitly: numpy's own str -> bytes conversion accepts ASCII only.
        encoded = [p.encode() for p in paths]
        return np.array(encoded, dtype=np.bytes_), np.array(labels, dtype=np.int32)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return {
            "file_name": os.path.join(self.root, self._paths[index].decode()),
            "image_id": int(index % len(self)),
            "class_id": int(self._labels[index]),
        }

    @property
    def labels(self) -> np.ndarray:
        """Class index of every image, int32 array of shape (N,)."""
        return self._labels

    @property
    def nbytes(self) -> int:
        """Memory held by the listing's arrays, in bytes."""
        return self._paths.nbytes + self._labels.nbytes

    @property
    def path_bytes(self) -> np.ndarray:
        """bytes (N,): each image's UTF-8 path relative to :attr:`root` (the listing's own array,
        not a copy: do not modify it)."""
        return self._paths

    def relative_paths(self) -> list[str]:
        """Every image's path relative to ``root`` (``<class>/<file>``), in listing order."""
        return [p.decode() for p in self._paths]


def image_source_kind(source: str) -> str | None:
    """What a user's image source names: ``"dataset"`` (a registered Detectron2 dataset),
    ``"folder"`` (an existing folder) or None (neither).

    The one rule behind every "registered dataset or folder" input (labeling's ``--input``, the
    experiment's ``UNLABELED_DATASET``, pre-training's datasets): a registered name wins over a
    folder of the same name.
    """
    if source in DatasetCatalog:
        return "dataset"
    if os.path.isdir(source):
        return "folder"
    return None
