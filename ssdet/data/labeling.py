"""The teacher's input: the images to label (:class:`ImageListing`), their loader, and their
batches (:class:`ShapeBatcher`).

The listing fixes the order (position i is the pseudo-label store's image id i); the loader
decodes and resizes each image as Detectron2's ``DefaultPredictor`` does, in DataLoader workers,
and turns an unreadable file into an ``error`` record instead of a dead worker; the batcher groups
images that the model pads to the same shape, so that batched labels are exact.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.structures import ImageList

from ssdet.data.datasets import unknown_dataset_hint
from ssdet.data.image_folder import IMAGE_EXTENSIONS, ImageFolderListing, image_source_kind
from ssdet.utils.errors import InputError

__all__ = [
    "ImageListing",
    "LabelingImages",
    "ShapeBatcher",
    "build_labeling_loader",
    "pack_images",
]

# The ShapeBatcher holds at most this many batches' worth of decoded images.
MAX_BUFFERED_BATCHES = 8


@dataclass(frozen=True)
class ImageListing:
    """The images to label, in a fixed order: position i is the store's image id i.

    Paths are held as one numpy array of UTF-8 bytes, not a list of Python strings, so that forked
    DataLoader workers share it instead of copying it page by page (1.28M paths at ImageNet scale).

    Attributes:
        source: the ``--input`` it was made from (a dataset name or a folder).
        root: absolute folder the paths are relative to.
        paths: bytes (N,) UTF-8 path of each image, relative to ``root``.
    """

    source: str
    root: str
    paths: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def relative_path(self, index: int) -> str:
        return self.paths[index].decode("utf-8")

    def file_name(self, index: int) -> str:
        """The absolute path of image ``index``."""
        return os.path.join(self.root, self.relative_path(index))

    def text(self) -> str:
        """The contents of ``listing.txt``: one relative path per line."""
        return "".join(p.decode("utf-8") + "\n" for p in self.paths)

    def sha256(self) -> str:
        """SHA-256 of :meth:`text`, i.e. :func:`file_sha256` of ``listing.txt``."""
        return hashlib.sha256(self.text().encode("utf-8")).hexdigest()

    @classmethod
    def from_input(cls, source: str) -> ImageListing:
        """List the images of a registered dataset or of a folder.

        Args:
            source: a registered Detectron2 dataset name (an image folder such as
                ``mini_imagenet_train``, or COCO-format dicts whose annotations are ignored), or a
                folder: ImageNet layout ``<class>/<image>`` when it has sub-folders, else the image
                files directly in it.

        Raises:
            InputError: unknown name that is not a folder either, or no images.
        """
        kind = image_source_kind(source)
        if kind == "dataset":
            dataset = DatasetCatalog.get(source)
            if isinstance(dataset, ImageFolderListing):
                return cls._from_folder(source, dataset)
            return cls._from_file_names(source, [d["file_name"] for d in dataset])
        if kind == "folder":
            if any(entry.is_dir() for entry in os.scandir(source)):
                return cls._from_folder(source, ImageFolderListing(source))
            root = os.path.abspath(source)
            names = sorted(
                e.name
                for e in os.scandir(root)
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not names:
                raise InputError(
                    f"Folder {source!r} has no images ({', '.join(IMAGE_EXTENSIONS)}) and no "
                    "class sub-folders."
                )
            return cls._from_relative(source, root, names)
        raise InputError(
            f"--input {source!r} is neither a folder nor a registered dataset. "
            + unknown_dataset_hint(source)
        )

    @classmethod
    def _from_folder(cls, source: str, folder: ImageFolderListing) -> ImageListing:
        # The folder's own UTF-8 byte array: no decode and re-encode of every path.
        return cls(source=source, root=os.path.abspath(folder.root), paths=folder.path_bytes)

    @classmethod
    def _from_relative(cls, source: str, root: str, paths: list[str]) -> ImageListing:
        if not paths:
            raise InputError(f"--input {source!r} lists no images.")
        encoded = np.array([p.encode("utf-8") for p in paths], dtype=np.bytes_)
        return cls(source=source, root=os.path.abspath(root), paths=encoded)

    @classmethod
    def _from_file_names(cls, source: str, file_names: list[str]) -> ImageListing:
        if not file_names:
            raise InputError(f"Dataset {source!r} lists no images.")
        absolute = [os.path.abspath(f) for f in file_names]
        root = os.path.commonpath([os.path.dirname(f) for f in absolute])
        return cls._from_relative(source, root, [os.path.relpath(f, root) for f in absolute])


class LabelingImages(torchdata.Dataset):
    """Decodes and resizes listing images for the teacher, as ``DefaultPredictor`` does.

    ``read_image(path, INPUT.FORMAT)`` (EXIF orientation applied; CMYK, grayscale, palette and PNG
    files named .jpg are converted), then ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``:
    the pixels ``DefaultPredictor`` gives the model.

    Item ``i``: ``{"index", "file_name" (relative), "image": uint8 (C, H, W), "height", "width"}``
    (original size), or ``{"index", "file_name", "error": reason}`` when the file cannot be read:
    a bad file must not kill a DataLoader worker, and thus the run.

    Args:
        listing: the images.
        indices: int (K,) the listing indices to load, in order.
        image_format: ``INPUT.FORMAT``.
        min_size: ``INPUT.MIN_SIZE_TEST``.
        max_size: ``INPUT.MAX_SIZE_TEST``.
    """

    def __init__(
        self,
        listing: ImageListing,
        indices: np.ndarray,
        image_format: str,
        min_size: int,
        max_size: int,
    ):
        self.listing = listing
        self.indices = np.asarray(indices, dtype=np.int64)
        self.image_format = image_format
        self.resize = T.ResizeShortestEdge([min_size, min_size], max_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.indices[i])
        file_name = self.listing.relative_path(index)
        try:
            image = read_image(self.listing.file_name(index), format=self.image_format)
            height, width = image.shape[:2]
            image = self.resize.get_transform(image).apply_image(image)
        # PIL raises OSError for truncated or unknown files, but also SyntaxError, ValueError or
        # DecompressionBombError for some corrupt ones: any of them means "skip this image".
        except Exception as e:
            return {"index": index, "file_name": file_name, "error": f"{type(e).__name__}: {e}"}
        return {
            "index": index,
            "file_name": file_name,
            # uint8 crosses the worker pipe at a quarter of float32's size; the model normalizes
            # it to the same float32 values DefaultPredictor's float input gives.
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
        }


def pack_images(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader collate: the batch's images become views into one uint8 tensor.

    Every tensor that crosses a worker's pipe costs the main process a shared-memory file
    descriptor handoff, ~1-2 ms on the CPU: as much as a tenth of a small teacher's time per image.
    One tensor per batch makes that cost per batch.
    """
    images = [r["image"] for r in records if "image" in r]
    if not images:
        return records
    flat = torch.cat([image.reshape(-1) for image in images])
    offset = 0
    for record in records:
        if "image" in record:
            size = record["image"].numel()
            record["image"] = flat[offset : offset + size].view(record["image"].shape)
            offset += size
    return records


def build_labeling_loader(
    cfg: CfgNode, listing: ImageListing, indices: np.ndarray, batch_size: int
) -> torchdata.DataLoader:
    """A DataLoader of :class:`LabelingImages` with ``DATALOADER.NUM_WORKERS`` workers.

    Yields lists of up to ``batch_size`` items, in listing order.
    """
    dataset = LabelingImages(
        listing, indices, cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    )
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=pack_images,
        pin_memory=torch.device(cfg.MODEL.DEVICE).type == "cuda",
    )


class ShapeBatcher:
    """Groups images that the model pads to the same shape into batches.

    Detectron2 pads a batch to its largest image (rounded up to the backbone's size divisibility),
    ``DefaultPredictor`` pads one image alone. The padding changes the outputs well beyond float
    rounding: GroupNorm statistics and the anchors cover the padded area. Images that pad to the
    same shape alone get the same input tensor in a batch, so batching them is exact (the
    remaining difference is float rounding of batched kernels, ~1e-6 relative).

    The batches depend only on the order of the added images, so a chunk always gives the same
    batches, hence the same bytes, in a fresh, a resumed or a multi-rank run.

    Args:
        batch_size: images per batch.
        size_divisibility: the backbone's ``size_divisibility``.
        padding_constraints: the backbone's ``padding_constraints``.
        max_buffered: when this many images wait for their shape's batch to fill, the fullest
            shape is flushed as a smaller batch (bounds memory: ~a dozen shapes at COCO sizes).
    """

    def __init__(
        self,
        batch_size: int,
        size_divisibility: int,
        padding_constraints: dict[str, int] | None = None,
        max_buffered: int | None = None,
    ):
        self.batch_size = batch_size
        self.size_divisibility = size_divisibility
        self.padding_constraints = padding_constraints
        self.max_buffered = max_buffered or MAX_BUFFERED_BATCHES * batch_size
        self._groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._buffered = 0
        # Resized images come in few sizes (one per aspect ratio); from_tensors costs ~0.1 ms.
        self._padded_shapes: dict[tuple[int, int], tuple[int, int]] = {}

    def padded_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) the model pads a (H, W) image to when it is alone in its batch."""
        shape = self._padded_shapes.get((height, width))
        if shape is None:
            # Detectron2's own rule, applied to an empty (0, H, W) tensor: nothing is allocated.
            empty = torch.empty((0, height, width), dtype=torch.uint8)
            padded = ImageList.from_tensors(
                [empty], self.size_divisibility, padding_constraints=self.padding_constraints
            )
            shape = self._padded_shapes[(height, width)] = tuple(padded.tensor.shape[-2:])
        return shape

    def add(self, item: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Add an image (``item["image"]``: (C, H, W)); return the batches that became ready."""
        key = self.padded_shape(*item["image"].shape[-2:])
        group = self._groups.setdefault(key, [])
        group.append(item)
        self._buffered += 1
        if len(group) == self.batch_size:
            return [self._pop(key)]
        if self._buffered >= self.max_buffered:
            return [self._pop(max(self._groups, key=lambda k: len(self._groups[k])))]
        return []

    def flush(self) -> list[list[dict[str, Any]]]:
        """Return every waiting image as batches, one per shape (in a deterministic order)."""
        return [self._pop(key) for key in list(self._groups)]

    def _pop(self, key: tuple[int, int]) -> list[dict[str, Any]]:
        batch = self._groups.pop(key)
        self._buffered -= len(batch)
        return batch
