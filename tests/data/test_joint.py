"""Tests of joint training's classification batches: mapper, seeded infinite sampler, errors."""

import itertools

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from ssdet.config import add_ssdet_config
from ssdet.data.joint import (
    ClassificationBatch,
    ClassificationMapper,
    JointBatch,
    add_classification_batches,
    build_classification_train_loader,
    joint_num_classes,
    load_classification_dataset,
)
from ssdet.utils.errors import InputError

from ..conftest import tiny_imagenet_counts


def joint_cfg(**joint):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "JointRetinaNet"
    cfg.SSDET.JOINT.DATASET = "mini_imagenet_train"
    cfg.SSDET.JOINT.IMS_PER_BATCH = 4
    cfg.SSDET.JOINT.IMAGE_SIZE = 24
    cfg.SSDET.JOINT.NUM_WORKERS = 0
    for key, value in joint.items():
        setattr(cfg.SSDET.JOINT, key, value)
    return cfg


def take(cfg, num_batches: int) -> list[ClassificationBatch]:
    # The augmentations draw from NumPy's global generator, as Detectron2 seeds it per process.
    np.random.seed(0)
    return list(itertools.islice(build_classification_train_loader(cfg), num_batches))


def test_mapper_crops_resizes_flips_in_the_detector_channel_order(tiny_world):
    record = DatasetCatalog.get("mini_imagenet_train")[7]
    bgr = ClassificationMapper(image_size=20, min_crop_fraction=0.5, image_format="BGR")
    rgb = ClassificationMapper(image_size=20, min_crop_fraction=0.5, image_format="RGB")
    np.random.seed(3)
    image, label = bgr(record)
    np.random.seed(3)
    image_rgb, _ = rgb(record)
    assert image.shape == (3, 20, 20) and image.dtype == torch.uint8
    assert label == record["class_id"]
    # Same random draws: the same crop and flip, only the channel order differs.
    assert torch.equal(image, image_rgb.flip(0))


def test_sampler_is_seeded_and_cycles_over_every_image(tiny_world):
    cfg = joint_cfg(SAMPLER_SEED=5)
    records = DatasetCatalog.get("mini_imagenet_train")
    num_images = len(records)
    per_class = torch.bincount(torch.tensor([r["class_id"] for r in records]), minlength=14)
    assert sorted(per_class.tolist()) == sorted(tiny_imagenet_counts("train"))
    assert num_images % 4 == 0
    per_epoch = num_images // 4
    batches = take(cfg, 2 * per_epoch + 3)
    first = batches[0]
    assert first.images.shape == (4, 3, 24, 24) and first.images.dtype == torch.uint8
    assert first.labels.dtype == torch.int64

    labels = torch.stack([b.labels for b in batches])
    # Infinite, epoch after epoch in a new order: each epoch holds every image once.
    for epoch in (labels[:per_epoch], labels[per_epoch : 2 * per_epoch]):
        assert torch.equal(torch.bincount(epoch.flatten(), minlength=14), per_class)
    assert not torch.equal(labels[:per_epoch], labels[per_epoch : 2 * per_epoch])

    again = take(cfg, 2 * per_epoch + 3)
    assert all(
        torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        for a, b in zip(batches, again, strict=True)
    )
    other = take(joint_cfg(SAMPLER_SEED=6), per_epoch)
    assert not torch.equal(labels[:per_epoch], torch.stack([b.labels for b in other]))


def test_joint_batches_pair_each_detection_batch():
    detection = [["d0"], ["d1"], ["d2"]]
    cfg = joint_cfg()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    assert add_classification_batches(detection, cfg) is detection


def test_joint_batches_zip_the_two_loaders(tiny_world):
    detection = [["d0"], ["d1"], ["d2"]]
    batches = list(add_classification_batches(detection, joint_cfg()))
    assert [b.detection for b in batches] == detection
    assert all(isinstance(b, JointBatch) for b in batches)
    assert all(b.classification.labels.shape == (4,) for b in batches)


def test_num_classes_is_taken_from_or_checked_against_the_dataset(tiny_world):
    assert joint_num_classes(joint_cfg()) == 14
    assert joint_num_classes(joint_cfg(NUM_CLASSES=14)) == 14
    assert load_classification_dataset(joint_cfg(NUM_CLASSES=14)).class_names[0] == "arrow"
    with pytest.raises(InputError, match="has 14 classes.*NUM_CLASSES is 3.*NUM_CLASSES 14"):
        build_classification_train_loader(joint_cfg(NUM_CLASSES=3))


@pytest.mark.parametrize(
    "joint,message",
    [
        ({"DATASET": "no_such_set"}, "Unknown dataset 'no_such_set'"),
        ({"DATASET": "mini_coco_train"}, "not an ImageNet-layout folder"),
        ({"NUM_CLASSES": -1}, "NUM_CLASSES must be >= 0"),
        ({"IMS_PER_BATCH": 0}, "IMS_PER_BATCH 0 must be a positive multiple"),
        ({"MIN_CROP_FRACTION": 0.0}, "MIN_CROP_FRACTION must be in"),
        ({"IMAGE_SIZE": 0}, "IMAGE_SIZE must be > 0"),
    ],
)
def test_bad_input(tiny_world, joint, message):
    cfg = joint_cfg(**joint)
    with pytest.raises(InputError, match=message):
        joint_num_classes(cfg)
        build_classification_train_loader(cfg)
