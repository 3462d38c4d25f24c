"""Tests of the mini world generator (ssdet/data/mini_world/), on the tiny world."""

import filecmp
import json
import os

import cv2
import numpy as np
import pytest

from ssdet.data.mini_world import (
    IMAGENET_DOMAINS,
    MINI_COCO_CLASSES,
    MINI_IMAGENET_CLASSES,
    generate_mini_coco,
    generate_mini_imagenet,
    generate_mini_world,
    images_per_class,
)
from ssdet.data.mini_world import imagenet as mini_imagenet


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
    assert options["domain"] == "coco"
    for split, key in (("train", "train_per_class"), ("val", "val_per_class")):
        assert sorted(os.listdir(os.path.join(directory, split))) == sorted(MINI_IMAGENET_CLASSES)
        counts = images_per_class(options[key], options["novel_fraction"])
        for name in MINI_IMAGENET_CLASSES:
            files = sorted(os.listdir(os.path.join(directory, split, name)))
            assert len(files) == counts[name] >= 1
            assert cv2.imread(os.path.join(directory, split, name, files[0])) is not None


def test_novel_classes_are_a_minority():
    counts = images_per_class(300, 0.1)
    novel = sum(counts[name] for name in MINI_IMAGENET_CLASSES[len(MINI_COCO_CLASSES) :])
    assert counts["circle"] == 300 and novel / sum(counts.values()) == pytest.approx(0.1, abs=0.01)
    # The shifted domain keeps the old balance: every class equally often.
    assert set(images_per_class(300, IMAGENET_DOMAINS["shifted"]["novel_fraction"]).values()) == {
        300
    }


def _ground_truth(directory: str, split: str) -> dict:
    with open(os.path.join(directory, "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("domain", ["coco", "shifted"])
def test_mini_imagenet_ground_truth_lists_every_image_and_its_dominant_object(tmp_path, domain):
    directory = generate_mini_imagenet(
        str(tmp_path), train_per_class=3, val_per_class=1, domain=domain, num_workers=1
    )
    for split in ("train", "val"):
        gt = _ground_truth(directory, split)
        assert [c["name"] for c in gt["categories"]] == MINI_IMAGENET_CLASSES
        listed = sorted(
            f"{c}/{n}"
            for c in MINI_IMAGENET_CLASSES
            for n in os.listdir(f"{directory}/{split}/{c}")
        )
        assert sorted(im["file_name"] for im in gt["images"]) == listed
        by_image = {im["id"]: [] for im in gt["images"]}
        for ann in gt["annotations"]:
            by_image[ann["image_id"]].append(ann)
        for im in gt["images"]:
            pixels = cv2.imread(os.path.join(directory, split, im["file_name"]))
            assert pixels.shape[:2] == (im["height"], im["width"])
            anns = by_image[im["id"]]
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
            # The folder's class is the image's dominant object: the largest box, near the center.
            folder = MINI_IMAGENET_CLASSES.index(im["file_name"].split("/")[0]) + 1
            largest = max(anns, key=lambda a: a["area"])
            assert largest["category_id"] == folder
            x, y, w, h = largest["bbox"]
            assert x < im["width"] / 2 < x + w and y < im["height"] / 2 < y + h


def test_mini_imagenet_ground_truth_boxes_are_the_drawn_objects(tmp_path, monkeypatch):
    # On a flat background without noise, blur or clutter, every drawn pixel belongs to an
    # object: the ground-truth boxes must hold them all, and each box must touch drawn pixels on
    # all four sides (tight boxes).
    background = np.float32(128.0)
    monkeypatch.setattr(
        mini_imagenet,
        "_textured_background",
        lambda rng, h, w: np.full((h, w, 3), background, np.float32),
    )
    directory = generate_mini_imagenet(
        str(tmp_path),
        train_per_class=4,
        val_per_class=1,
        secondary_prob=1.0,
        clutter_per_image=(0, 0),
        noise_std=0.0,
        max_blur_sigma=0.0,
        num_workers=1,
    )
    gt = _ground_truth(directory, "train")
    secondary = 0
    for im in gt["images"]:
        pixels = cv2.imread(os.path.join(directory, "train", im["file_name"])).astype(np.int32)
        difference = np.abs(pixels - 128).max(axis=2)
        # Objects contrast with what is under them; shading and JPEG soften a few edge pixels.
        drawn, touched = difference > 40, difference > 12
        covered = np.zeros_like(drawn)
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        secondary += len(anns) - 1
        for ann in anns:
            x, y, w, h = ann["bbox"]
            covered[y : y + h, x : x + w] = True
            inside = touched[y : y + h, x : x + w]
            assert (
                inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            )
        # Anti-aliased rims may stick out of a box by a pixel.
        covered = cv2.dilate(covered.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert not (drawn & ~covered).any(), im["file_name"]
    assert secondary > 0


def test_unknown_domain_raises(tmp_path):
    with pytest.raises(ValueError, match="domain"):
        generate_mini_imagenet(str(tmp_path), train_per_class=1, val_per_class=1, domain="x")


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
