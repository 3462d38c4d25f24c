"""Classification data for pre-training: ImageNet-layout splits, augmentations, loaders.

Images reach the model as Detectron2's detectors see them: uint8 tensors (C, H, W) in
``INPUT.FORMAT`` channel order, normalized by the model with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``,
so the pre-trained backbone sees the same input statistics when the detector fine-tunes it.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.detection_utils import read_image
from detectron2.data.samplers import TrainingSampler
from torchvision.transforms import v2

from ssdet.data.image_folder import ImageFolderListing, image_source_kind
from ssdet.utils.errors import InputError

__all__ = [
    "PretrainMapper",
    "PretrainSplits",
    "build_pretrain_test_loader",
    "build_pretrain_train_loader",
    "build_test_transform",
    "build_train_transform",
    "load_pretrain_splits",
]


@dataclass(frozen=True)
class PretrainSplits:
    """The train and val splits of a pre-training dataset (same classes, same order)."""

    train: ImageFolderListing
    val: ImageFolderListing

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


def _registered_listing(name: str) -> ImageFolderListing:
    if MetadataCatalog.get(name).get("evaluator_type") != "classification":
        raise InputError(
            f"Dataset {name!r} is not an ImageNet-layout image folder dataset (registered with "
            f"ssdet.data.register_image_folder), so it has no class labels to pre-train on."
        )
    return DatasetCatalog.get(name)


def _split_listing(dataset: str) -> ImageFolderListing:
    """A split given as a registered image-folder dataset name or a ``<class>/<image>`` folder."""
    kind = image_source_kind(dataset)
    if kind == "dataset":
        return _registered_listing(dataset)
    if kind == "folder":
        return ImageFolderListing(dataset)
    raise InputError(
        f"Validation dataset {dataset!r} is neither a registered dataset nor a folder. "
        f"Pass a split folder <class>/<image> or a registered name such as 'mini_imagenet_val'."
    )


def _resolve_train_and_val(dataset: str) -> tuple[ImageFolderListing, str]:
    """The train listing of ``dataset`` and where its val split is (a name or a folder)."""
    kind = image_source_kind(dataset)
    if kind == "dataset":
        if dataset.endswith("_train"):
            return _registered_listing(dataset), dataset[: -len("_train")] + "_val"
        return _registered_listing(dataset), ""
    if f"{dataset}_train" in DatasetCatalog:  # "mini_imagenet" names the pair of splits
        return _registered_listing(f"{dataset}_train"), f"{dataset}_val"
    if kind == "folder":
        train = os.path.join(dataset, "train")
        if not os.path.isdir(train):
            raise InputError(
                f"Folder {dataset!r} has no train/ sub-folder. A pre-training folder holds "
                f"train/<class>/<image> and val/<class>/<image> (ImageNet's layout)."
            )
        return ImageFolderListing(train), os.path.join(dataset, "val")
    raise InputError(
        f"Pre-training dataset {dataset!r} is neither a registered dataset nor a folder. Pass a "
        f"folder with train/<class>/ and val/<class>/, or a registered ImageNet-layout dataset "
        f"such as 'mini_imagenet' (generate it with `python datasets/prepare_mini_world.py`)."
    )


def load_pretrain_splits(cfg: CfgNode) -> PretrainSplits:
    """The train and val listings named by ``SSDET.PRETRAIN.DATASET`` and ``VAL_DATASET``.

    Raises:
        InputError: a missing or empty dataset, no val split, or splits with different classes.
    """
    dataset = cfg.SSDET.PRETRAIN.DATASET
    if not dataset:
        raise InputError(
            "No pre-training dataset: pass --dataset FOLDER_OR_NAME "
            "(or set SSDET.PRETRAIN.DATASET)."
        )
    train, default_val = _resolve_train_and_val(dataset)
    val_dataset = cfg.SSDET.PRETRAIN.VAL_DATASET or default_val
    if not val_dataset or image_source_kind(val_dataset) is None:
        raise InputError(
            f"Pre-training dataset {dataset!r} has no val split "
            f"({val_dataset or 'no <name>_val'} not found); top-1 and the linear probe need one. "
            f"Add it, or name it with SSDET.PRETRAIN.VAL_DATASET."
        )
    val = _split_listing(val_dataset)
    if val.class_names != train.class_names:
        raise InputError(
            f"The train and val splits of {dataset!r} have different classes "
            f"({len(train.class_names)} in {train.root}, {len(val.class_names)} in {val.root}): "
            f"both need the same <class> folders."
        )
    return PretrainSplits(train=train, val=val)


def build_train_transform(cfg: CfgNode, color_augmentation: bool) -> Callable:
    """The random augmentation of one training view (uint8 RGB tensor (3, H, W) in and out).

    Args:
        cfg: the run's config (``SSDET.PRETRAIN.IMAGE_SIZE``, ``CROP_SCALE``, ``SIMCLR.*``).
        color_augmentation: add SimCLR's color jitter, grayscale and Gaussian blur to the random
            resized crop and horizontal flip that every method uses.
    """
    pc = cfg.SSDET.PRETRAIN
    size = pc.IMAGE_SIZE
    ops: list[Callable] = [
        v2.RandomResizedCrop(size, scale=tuple(pc.CROP_SCALE), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if color_augmentation:
        s = pc.SIMCLR.COLOR_JITTER_STRENGTH
        # SimCLR's kernel is 10% of the image side, made odd as a Gaussian kernel needs.
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops += [
            v2.RandomApply(
                [v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=pc.SIMCLR.COLOR_JITTER_PROB
            ),
            v2.RandomGrayscale(p=pc.SIMCLR.GRAYSCALE_PROB),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=pc.SIMCLR.BLUR_PROB),
        ]
    return v2.Compose(ops)


def build_test_transform(cfg: CfgNode) -> Callable:
    """Evaluation: shorter side resized to ``IMAGE_SIZE``, then the central square."""
    size = cfg.SSDET.PRETRAIN.IMAGE_SIZE
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])


class PretrainMapper:
    """Maps a listing entry to ``{"image" or "views", "class_id"}`` for the pre-training models.

    Args:
        transform: applied to the decoded uint8 RGB tensor (3, H, W) once per view.
        num_views: 1 gives ``"image"``: a tensor; 2 or more give ``"views"``: a tuple of
            independently augmented tensors of the same image (SimCLR's positive pairs).
        image_format: channel order the model expects (``INPUT.FORMAT``, "BGR" or "RGB").
    """

    def __init__(self, transform: Callable, num_views: int = 1, image_format: str = "BGR"):
        if image_format not in ("BGR", "RGB"):
            raise InputError(
                f"INPUT.FORMAT must be 'BGR' or 'RGB' for pre-training, got {image_format!r}."
            )
        self.transform = transform
        self.num_views = num_views
        self.image_format = image_format

    def _view(self, image: torch.Tensor) -> torch.Tensor:
        view = self.transform(image)
        # Color ops assume RGB, so the channels are reordered only after augmentation.
        return view.flip(0).contiguous() if self.image_format == "BGR" else view

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        image = read_image(dataset_dict["file_name"], format="RGB")
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out = {"class_id": dataset_dict["class_id"], "image_id": dataset_dict["image_id"]}
        if self.num_views == 1:
            out["image"] = self._view(image)
        else:
            out["views"] = tuple(self._view(image) for _ in range(self.num_views))
        return out


def build_pretrain_train_loader(
    cfg: CfgNode, dataset: Sequence[dict], num_views: int, color_augmentation: bool
):
    """An infinite loader of training batches (lists of mapped dicts), sharded across processes.

    Detectron2's ``TrainingSampler`` shuffles with ``SEED`` (negative: a random seed shared by
    the processes) and gives each process a disjoint part of every epoch;
    ``SOLVER.IMS_PER_BATCH`` is the total batch over all processes.
    """
    mapper = PretrainMapper(
        build_train_transform(cfg, color_augmentation), num_views, cfg.INPUT.FORMAT
    )
    return build_detection_train_loader(
        dataset,
        mapper=mapper,
        sampler=TrainingSampler(len(dataset), seed=cfg.SEED if cfg.SEED >= 0 else None),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_pretrain_test_loader(cfg: CfgNode, dataset: Sequence[dict]):
    """A loader over ``dataset`` once (this process's share), with the evaluation transform."""
    mapper = PretrainMapper(build_test_transform(cfg), 1, cfg.INPUT.FORMAT)
    return build_detection_test_loader(
        dataset,
        mapper=mapper,
        batch_size=cfg.SSDET.PRETRAIN.EVAL_BATCH_SIZE,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
