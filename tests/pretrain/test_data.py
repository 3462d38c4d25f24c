"""Pre-training data: which splits a dataset argument names, and the views the mapper makes."""

import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from ssdet.config import add_ssdet_config
from ssdet.pretrain import (
    PretrainMapper,
    build_test_transform,
    build_train_transform,
    load_pretrain_splits,
)
from ssdet.utils.errors import InputError

from ..conftest import tiny_imagenet_counts


def pretrain_cfg(dataset: str, val_dataset: str = "", image_size: int = 32):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.SSDET.PRETRAIN.DATASET = dataset
    cfg.SSDET.PRETRAIN.VAL_DATASET = val_dataset
    cfg.SSDET.PRETRAIN.IMAGE_SIZE = image_size
    return cfg


def make_split(root, classes: dict[str, int], size: int = 40) -> str:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n):
            image = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
            cv2.imwrite(os.path.join(root, name, f"{i}.jpg"), image)
    return str(root)


@pytest.mark.parametrize("name", ["mini_imagenet", "mini_imagenet_train"])
def test_registered_dataset_and_its_val_split(tiny_world, name):
    splits = load_pretrain_splits(pretrain_cfg(name))
    assert len(splits.class_names) == 14
    assert splits.train.root.endswith(os.path.join("mini_imagenet", "train"))
    assert splits.val.root.endswith(os.path.join("mini_imagenet", "val"))
    assert len(splits.train) == sum(tiny_imagenet_counts("train"))
    assert len(splits.val) == sum(tiny_imagenet_counts("val"))


def test_folder_with_train_and_val(tmp_path):
    make_split(tmp_path / "data" / "train", {"a": 2, "b": 3})
    make_split(tmp_path / "data" / "val", {"a": 1, "b": 1})
    splits = load_pretrain_splits(pretrain_cfg(str(tmp_path / "data")))
    assert splits.class_names == ["a", "b"]
    assert (len(splits.train), len(splits.val)) == (5, 2)
    # An explicit val split replaces <folder>/val.
    other = make_split(tmp_path / "other_val", {"a": 2, "b": 2})
    splits = load_pretrain_splits(pretrain_cfg(str(tmp_path / "data"), val_dataset=other))
    assert len(splits.val) == 4


def test_bad_datasets(tmp_path, tiny_world):
    with pytest.raises(InputError, match="No pre-training dataset"):
        load_pretrain_splits(pretrain_cfg(""))
    with pytest.raises(InputError, match="neither a registered dataset nor a folder"):
        load_pretrain_splits(pretrain_cfg(str(tmp_path / "missing")))
    (tmp_path / "flat").mkdir()
    with pytest.raises(InputError, match="no train/ sub-folder"):
        load_pretrain_splits(pretrain_cfg(str(tmp_path / "flat")))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="no class sub-folders"):
        load_pretrain_splits(pretrain_cfg(str(tmp_path / "empty")))
    make_split(tmp_path / "noval" / "train", {"a": 1})
    with pytest.raises(InputError, match="has no val split"):
        load_pretrain_splits(pretrain_cfg(str(tmp_path / "noval")))
    make_split(tmp_path / "noval" / "val", {"a": 1, "z": 1})
    with pytest.raises(InputError, match="different classes"):
        load_pretrain_splits(pretrain_cfg(str(tmp_path / "noval")))
    with pytest.raises(InputError, match="not an ImageNet-layout image folder"):
        load_pretrain_splits(pretrain_cfg("mini_coco_train"))


def test_two_views_differ_and_have_the_crop_shape(tmp_path):
    root = make_split(tmp_path / "train", {"a": 1}, size=48)
    cfg = pretrain_cfg("", image_size=24)
    mapper = PretrainMapper(build_train_transform(cfg, color_augmentation=True), num_views=2)
    torch.manual_seed(0)
    out = mapper({"file_name": os.path.join(root, "a", "0.jpg"), "class_id": 0, "image_id": 0})
    first, second = out["views"]
    assert first.shape == second.shape == (3, 24, 24)
    assert first.dtype == second.dtype == torch.uint8
    assert not torch.equal(first, second)
    assert out["class_id"] == 0 and "image" not in out


def test_channel_order_follows_input_format(tmp_path):
    # A pure red image (RGB 255, 0, 0; cv2 writes BGR) through the deterministic test transform.
    os.makedirs(tmp_path / "a")
    red = np.zeros((30, 40, 3), np.uint8)
    red[..., 2] = 255
    cv2.imwrite(str(tmp_path / "a" / "red.png"), red)
    item = {"file_name": str(tmp_path / "a" / "red.png"), "class_id": 0, "image_id": 0}
    transform = build_test_transform(pretrain_cfg("", image_size=16))
    bgr = PretrainMapper(transform, image_format="BGR")(item)["image"]
    rgb = PretrainMapper(transform, image_format="RGB")(item)["image"]
    assert bgr.shape == (3, 16, 16)
    assert bgr[2].min() == 255 and bgr[0].max() == 0
    assert torch.equal(rgb, bgr.flip(0))
