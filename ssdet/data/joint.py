"""Joint training's classification batches: labeled ImageNet-folder images beside detection.

"Rethinking Pre-training and Self-training" compares pre-training and self-training with joint
training, where one model learns COCO detection and ImageNet classification at once. Each step
then holds a detection batch (whatever the detection loader yields: a list of mapped dicts, or
the student's :class:`~ssdet.data.mixed.MixedBatch`) and a :class:`ClassificationBatch` of
``SSDET.JOINT.IMS_PER_BATCH`` labeled images from an ImageNet-layout folder
(:class:`~ssdet.data.image_folder.ImageFolderListing`), drawn by their own infinite, seeded,
rank-sharded :class:`~detectron2.data.samplers.TrainingSampler` stream (resumable:
:mod:`ssdet.data.resumable`). :func:`add_classification_batches`
zips the two into :class:`JointBatch` pairs, which :class:`~ssdet.modeling.joint.JointRetinaNet`
takes as its training input.
"""

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ssdet.data.build import check_registered
from ssdet.data.image_folder import ImageFolderListing
from ssdet.data.resumable import ZipLoader, build_resumable_train_loader
from ssdet.structures import ClassificationBatch, JointBatch
from ssdet.utils.errors import InputError

__all__ = [
    "ClassificationBatch",
    "ClassificationMapper",
    "JointBatch",
    "JointBatchLoader",
    "JOINT_META_ARCHITECTURE",
    "add_classification_batches",
    "is_joint_training",
    "build_classification_train_loader",
    "joint_num_classes",
    "load_classification_dataset",
]

logger = logging.getLogger(__name__)


def load_classification_dataset(cfg: CfgNode) -> ImageFolderListing:
    """The classification images of ``SSDET.JOINT.DATASET``, checked against the config.

    Raises:
        InputError: the dataset is not registered, is not an ImageNet-layout folder, or has a
            class count other than a non-zero ``SSDET.JOINT.NUM_CLASSES``.
    """
    name = cfg.SSDET.JOINT.DATASET
    check_registered([name])
    dataset = DatasetCatalog.get(name)
    if not isinstance(dataset, ImageFolderListing):
        raise InputError(
            f"SSDET.JOINT.DATASET {name!r} is not an ImageNet-layout folder dataset: joint "
            "training needs class-labeled images <split>/<class>/<image>. Use e.g. "
            "imagenet_train or mini_imagenet_train (ssdet.data.register_image_folder registers "
            "your own)."
        )
    expected = cfg.SSDET.JOINT.NUM_CLASSES
    if expected and expected != len(dataset.class_names):
        raise InputError(
            f"SSDET.JOINT.DATASET {name!r} has {len(dataset.class_names)} classes "
            f"({dataset.root}) but SSDET.JOINT.NUM_CLASSES is {expected}. Set "
            f"SSDET.JOINT.NUM_CLASSES {len(dataset.class_names)} (or 0 to take it from the "
            "dataset)."
        )
    return dataset


def joint_num_classes(cfg: CfgNode) -> int:
    """The classification head's class count: ``SSDET.JOINT.NUM_CLASSES``, or the dataset's.

    With ``NUM_CLASSES`` 0 the dataset is listed (cached, see
    :class:`~ssdet.data.image_folder.ImageFolderListing`); a non-zero value needs no data here
    and is checked against the dataset when the loader is built.
    """
    if cfg.SSDET.JOINT.NUM_CLASSES < 0:
        raise InputError(
            f"SSDET.JOINT.NUM_CLASSES must be >= 0 (0 = from the dataset), got "
            f"{cfg.SSDET.JOINT.NUM_CLASSES}"
        )
    if cfg.SSDET.JOINT.NUM_CLASSES:
        return cfg.SSDET.JOINT.NUM_CLASSES
    return len(load_classification_dataset(cfg).class_names)


class ClassificationMapper:
    """Reads a labeled image-folder dict into a square, augmented classification image.

    Training augmentation, Detectron2 ``Augmentation`` s: a random crop whose height and width
    are each a uniform fraction in ``[min_crop_fraction, 1]`` of the image's, a resize to
    ``image_size`` x ``image_size`` and a horizontal flip with probability 0.5. They draw from
    NumPy's global generator, which Detectron2 seeds per process and per DataLoader worker.

    Args:
        image_size: output side, pixels.
        min_crop_fraction: smallest crop side as a fraction of the image side, in (0, 1].
        image_format: channel order of the output, the detector's ``INPUT.FORMAT``.
    """

    @configurable
    def __init__(self, *, image_size: int, min_crop_fraction: float, image_format: str = "BGR"):
        if image_size <= 0:
            raise InputError(f"SSDET.JOINT.IMAGE_SIZE must be > 0 pixels, got {image_size}")
        if not 0.0 < min_crop_fraction <= 1.0:
            raise InputError(
                f"SSDET.JOINT.MIN_CROP_FRACTION must be in (0, 1], got {min_crop_fraction}"
            )
        self.image_format = image_format
        self.augmentations = T.AugmentationList(
            [
                T.RandomCrop("relative_range", (min_crop_fraction, min_crop_fraction)),
                T.Resize((image_size, image_size)),
                T.RandomFlip(horizontal=True),
            ]
        )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        return {
            "image_size": cfg.SSDET.JOINT.IMAGE_SIZE,
            "min_crop_fraction": cfg.SSDET.JOINT.MIN_CROP_FRACTION,
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: dict) -> tuple[torch.Tensor, int]:
        """
        Args:
            dataset_dict: ``{"file_name", "class_id", ...}`` from an ImageFolderListing.

        Returns:
            ``(image, class_id)``: image (C, image_size, image_size) uint8.
        """
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return image, dataset_dict["class_id"]


def collate_classification(samples: list[tuple[torch.Tensor, int]]) -> ClassificationBatch:
    """Stack mapped ``(image, class_id)`` pairs into a :class:`ClassificationBatch`."""
    images, labels = zip(*samples, strict=True)
    return ClassificationBatch(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def _classification_loader_from_config(cfg: CfgNode, *, dataset=None) -> dict[str, Any]:
    seed = cfg.SSDET.JOINT.SAMPLER_SEED
    return {
        "dataset": load_classification_dataset(cfg) if dataset is None else dataset,
        "mapper": ClassificationMapper(cfg),
        "total_batch_size": cfg.SSDET.JOINT.IMS_PER_BATCH,
        "seed": seed if seed >= 0 else None,
        "num_workers": cfg.SSDET.JOINT.NUM_WORKERS,
    }


@configurable(from_config=_classification_loader_from_config)
def build_classification_train_loader(
    dataset: ImageFolderListing,
    *,
    mapper: Callable[[dict], tuple[torch.Tensor, int]],
    total_batch_size: int,
    seed: int | None = None,
    num_workers: int = 0,
) -> Iterable[ClassificationBatch]:
    """Build the infinite loader of classification batches (one per step and process).

    Built from a config, the dataset is ``SSDET.JOINT.DATASET`` (checked by
    :func:`load_classification_dataset`) and the mapper :class:`ClassificationMapper`.

    Args:
        dataset: labeled image-folder dicts (``{"file_name", "class_id"}``).
        mapper: maps a dict to ``(image, class_id)``.
        total_batch_size: images per step over all processes; each gets an equal share.
        seed: seed of the shuffle, equal on every process (the sampler shards one stream by
            rank); None = a random seed shared by all processes.
        num_workers: DataLoader worker processes.

    Returns:
        An infinite iterable of :class:`ClassificationBatch`; the images cycle through the
        dataset in a new seeded order each epoch.
    """
    # TrainingSampler's stream, sharded by rank, resumable (ssdet.data.resumable).
    loader = build_resumable_train_loader(
        dataset,
        mapper=mapper,
        seed=seed,
        total_batch_size=total_batch_size,
        # The images are resized to one square shape: nothing to group.
        aspect_ratio_grouping=False,
        num_workers=num_workers,
        collate_fn=collate_classification,
        keys=("SSDET.JOINT.IMS_PER_BATCH", "SSDET.JOINT.NUM_WORKERS"),
    )
    logger.info(
        "Joint classification batches: %s images per process and step from %s images",
        loader.batch_size,
        len(dataset),
    )
    return loader


class JointBatchLoader(ZipLoader):
    """Zips a detection loader and a classification loader into :class:`JointBatch` pairs.

    Args:
        detection_loader: infinite iterable of detection batches.
        classification_loader: infinite iterable of :class:`ClassificationBatch`.
    """

    def __init__(
        self,
        detection_loader: Iterable[Any],
        classification_loader: Iterable[ClassificationBatch],
    ):
        self.detection_loader = detection_loader
        self.classification_loader = classification_loader
        super().__init__((detection_loader, classification_loader), JointBatch)


# The joint model's MODEL.META_ARCHITECTURE (ssdet.modeling.joint.JointRetinaNet).
JOINT_META_ARCHITECTURE = "JointRetinaNet"


def is_joint_training(cfg: CfgNode) -> bool:
    """Whether a run trains jointly: its model is ``JointRetinaNet``.

    Raises:
        InputError: the old switch ``SSDET.JOINT.ENABLED True``, naming the key to set instead.
    """
    if cfg.SSDET.JOINT.ENABLED:
        raise InputError(
            "SSDET.JOINT.ENABLED is replaced by the model's name: set MODEL.META_ARCHITECTURE "
            f"{JOINT_META_ARCHITECTURE!r} (instead of 'RetinaNet') and remove "
            "SSDET.JOINT.ENABLED from the config."
        )
    return cfg.MODEL.META_ARCHITECTURE == JOINT_META_ARCHITECTURE


def add_classification_batches(detection_loader: Iterable[Any], cfg: CfgNode) -> Iterable[Any]:
    """The train loader of a run: with joint training (:func:`is_joint_training`), each batch gets
    its classification images (:class:`JointBatchLoader`); otherwise ``detection_loader`` itself.

    Args:
        detection_loader: the trainer's detection loader.
        cfg: the run's config.
    """
    if not is_joint_training(cfg):
        return detection_loader
    return JointBatchLoader(detection_loader, build_classification_train_loader(cfg))
