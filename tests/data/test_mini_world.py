"""Tests of the mini world generator (ssdet/data/mini_world.py), on the tiny world."""

import filecmp
import json
import os

import cv2
import pytest

from ssdet.data.mini_world import (
    MINI_COCO_CLASSES,
    MINI_IMAGENET_CLASSES,
    generate_mini_coco,
    generate_mini_imagenet,
    generate_mini_world,
)


def _files(root) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _load(directory, split) -> dict:
    with open(os.path.join(directory, "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return generate_mini_world(str(tmp_path_factory.mktemp("world")), tiny=True, num_workers=1)


def test_same_seed_is_byte_identical_across_worker_counts(tmp_path, world):
    # Two processes render in a different order than one; per-image seeding makes that irrelevant.
    again = generate_mini_world(str(tmp_path), tiny=True, num_workers=2)
    for name in ("mini_coco", "mini_imagenet"):
        assert _files(world[name]) == _files(again[name])


def test_different_seed_differs(tmp_path, world):
    other = generate_mini_coco(str(tmp_path), num_train=4, num_val=1, image_size=64, seed=1)
    assert not filecmp.cmp(
        os.path.join(world["mini_coco"], "train", "000000.jpg"),
        os.path.join(other, "train", "000000.jpg"),
        shallow=False,
    )


@pytest.mark.parametrize("split", ["train", "val"])
def test_annotations_load_in_pycocotools_and_detectron2(world, split):
    from detectron2.data.datasets import load_coco_json
    from pycocotools.coco import COCO

    directory = world["mini_coco"]
    json_file = os.path.join(directory, "annotations", f"instances_{split}.json")
    coco = COCO(json_file)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == MINI_COCO_CLASSES
    dicts = load_coco_json(json_file, os.path.join(directory, split))
    assert len(dicts) == len(coco.getImgIds())
    assert sum(len(d["annotations"]) for d in dicts) == len(coco.getAnnIds())
    assert all(os.path.isfile(d["file_name"]) for d in dicts)


@pytest.mark.parametrize("split", ["train", "val"])
def test_boxes_are_inside_images_and_images_match_json(world, split):
    directory = world["mini_coco"]
    data = _load(directory, split)
    images = {im["id"]: im for im in data["images"]}
    for im in data["images"]:
        pixels = cv2.imread(os.path.join(directory, split, im["file_name"]))
        assert pixels is not None
        assert pixels.shape == (im["height"], im["width"], 3)
    assert data["annotations"]
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= im["width"] and y + h <= im["height"]
        # The area counts visible pixels, which all lie in the box.
        assert 0 < ann["area"] <= w * h
        assert ann["iscrowd"] == 0
        assert 1 <= ann["category_id"] <= len(MINI_COCO_CLASSES)
    assert len({ann["id"] for ann in data["annotations"]}) == len(data["annotations"])


def test_every_class_occurs(world):
    data = _load(world["mini_coco"], "train")
    assert {ann["category_id"] for ann in data["annotations"]} == set(
        range(1, len(MINI_COCO_CLASSES) + 1)
    )


def test_image_sizes_vary(world):
    # Aspect-ratio grouping in the data loader needs landscape and portrait images.
    data = _load(world["mini_coco"], "train")
    ratios = {im["width"] > im["height"] for im in data["images"]}
    assert ratios == {True, False}


def test_mini_imagenet_layout(world):
    directory = world["mini_imagenet"]
    assert set(MINI_COCO_CLASSES) < set(MINI_IMAGENET_CLASSES)
    assert MINI_IMAGENET_CLASSES[: len(MINI_COCO_CLASSES)] == MINI_COCO_CLASSES
    with open(os.path.join(directory, "world.json")) as f:
        options = json.load(f)["options"]
    for split, key in (("train", "train_per_class"), ("val", "val_per_class")):
        assert sorted(os.listdir(os.path.join(directory, split))) == sorted(MINI_IMAGENET_CLASSES)
        for name in MINI_IMAGENET_CLASSES:
            files = sorted(os.listdir(os.path.join(directory, split, name)))
            assert len(files) == options[key]
            assert cv2.imread(os.path.join(directory, split, name, files[0])) is not None


def test_marker_makes_second_call_a_no_op(tmp_path, capsys):
    root = str(tmp_path)
    directory = generate_mini_coco(root, num_train=2, num_val=1, image_size=48, num_workers=1)
    image = os.path.join(directory, "train", "000000.jpg")
    mtime = os.stat(image).st_mtime_ns
    capsys.readouterr()
    generate_mini_coco(root, num_train=2, num_val=1, image_size=48, num_workers=1)
    assert "already present" in capsys.readouterr().out
    assert os.stat(image).st_mtime_ns == mtime

    generate_mini_coco(root, num_train=3, num_val=1, image_size=48, num_workers=1)
    assert len(_load(directory, "train")["images"]) == 3
    with open(os.path.join(directory, "world.json")) as f:
        assert json.load(f)["options"]["num_train"] == 3


def test_partial_output_is_cleaned_and_regenerated(tmp_path):
    root = str(tmp_path)
    directory = generate_mini_imagenet(
        root, train_per_class=1, val_per_class=1, image_size=32, num_workers=1
    )
    expected = _files(directory)
    # An interrupted run: no marker, a stray file and a missing image.
    os.remove(os.path.join(directory, "world.json"))
    stray = os.path.join(directory, "train", "stray.jpg")
    open(stray, "w").close()
    os.remove(os.path.join(directory, "val", "star", "star_000000.jpg"))
    generate_mini_imagenet(root, train_per_class=1, val_per_class=1, image_size=32, num_workers=1)
    assert _files(directory) == expected


def test_invalid_option_raises(tmp_path):
    with pytest.raises(ValueError, match="objects_per_image"):
        generate_mini_coco(str(tmp_path), num_train=1, num_val=1, objects_per_image=(5, 2))
