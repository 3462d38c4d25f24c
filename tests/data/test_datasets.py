import json
import os
import shutil

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from ssdet.config import add_ssdet_config
from ssdet.data import (
    ImageFolderListing,
    check_num_classes,
    check_registered,
    get_labeled_dataset_dicts,
    register_coco_dataset,
)
from ssdet.data.mini_world import MINI_COCO_CLASSES, MINI_IMAGENET_CLASSES
from ssdet.utils.errors import InputError


def test_mini_datasets_registered(tiny_world):
    train = DatasetCatalog.get("mini_coco_train")
    assert train and all(os.path.isfile(d["file_name"]) for d in train)
    assert all(d["annotations"] for d in train[:5])
    assert MetadataCatalog.get("mini_coco_val").thing_classes == MINI_COCO_CLASSES
    assert MetadataCatalog.get("mini_coco_val").evaluator_type == "coco"
    listing = DatasetCatalog.get("mini_imagenet_train")
    assert isinstance(listing, ImageFolderListing)
    assert listing.class_names == sorted(MINI_IMAGENET_CLASSES)


def test_coco_2017_registered_in_detectron2_layout():
    meta = MetadataCatalog.get("coco_2017_train")
    root = os.environ["DETECTRON2_DATASETS"]
    assert meta.json_file == os.path.join(root, "coco/annotations/instances_train2017.json")
    assert len(meta.thing_classes) == 80
    assert "imagenet_train" in DatasetCatalog.list()


def test_unknown_dataset_name():
    with pytest.raises(InputError, match="Unknown dataset 'no_such_set'.*mini_coco_train"):
        check_registered(["no_such_set"])


def test_missing_dataset_dir(tmp_path):
    register_coco_dataset("t_missing", str(tmp_path / "a.json"), str(tmp_path / "img"), hint="H!")
    with pytest.raises(InputError, match="annotation file .* not found. H!"):
        DatasetCatalog.get("t_missing")


def copy_mini(tiny_world, tmp_path) -> tuple[str, str]:
    src = os.path.join(tiny_world, "mini_coco")
    json_file = str(tmp_path / "instances.json")
    shutil.copy(os.path.join(src, "annotations", "instances_val.json"), json_file)
    return json_file, os.path.join(src, "val")


def test_corrupt_annotation_json(tiny_world, tmp_path):
    json_file, images = copy_mini(tiny_world, tmp_path)
    text = open(json_file).read()
    open(json_file, "w").write(text[: len(text) // 2])  # truncated download
    register_coco_dataset("t_corrupt", json_file, images)
    with pytest.raises(InputError, match="not valid JSON"):
        DatasetCatalog.get("t_corrupt")


def test_not_coco_and_empty(tiny_world, tmp_path):
    json_file, images = copy_mini(tiny_world, tmp_path)
    json.dump({"images": []}, open(json_file, "w"))
    register_coco_dataset("t_notcoco", json_file, images)
    with pytest.raises(InputError, match="not a COCO instances file"):
        DatasetCatalog.get("t_notcoco")
    json.dump(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]},
        open(json_file, "w"),
    )
    register_coco_dataset("t_empty", json_file, images)
    with pytest.raises(InputError, match="lists no images"):
        DatasetCatalog.get("t_empty")


def test_missing_images_are_counted_and_named(tiny_world, tmp_path):
    """Issue 16, item 9: found when the dataset is built, not when a batch samples the image."""
    json_file, images = copy_mini(tiny_world, tmp_path)
    shutil.copytree(images, tmp_path / "val")
    names = sorted(d["file_name"] for d in json.load(open(json_file))["images"])
    for name in names[:2]:
        os.remove(tmp_path / "val" / name)
    register_coco_dataset("t_missing_images", json_file, str(tmp_path / "val"), hint="H!")
    with pytest.raises(InputError) as e:
        DatasetCatalog.get("t_missing_images")
    assert str(e.value) == (
        f"Dataset 't_missing_images': 2 of the {len(names)} images that {json_file!r} annotates "
        f"are missing from {str(tmp_path / 'val')!r} (first: {names[0]}, {names[1]}). Restore "
        "them, or remove their entries from the annotation file. H!"
    )


def mini_cfg(tmp_path, **data):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.RETINANET.NUM_CLASSES = len(MINI_COCO_CLASSES)
    cfg.DATASETS.TRAIN = ("mini_coco_train",)
    cfg.OUTPUT_DIR = str(tmp_path)
    for k, v in data.items():
        setattr(cfg.SSDET.DATA, k, v)
    return cfg


def test_class_count_mismatch(tiny_world, tmp_path):
    cfg = mini_cfg(tmp_path)
    check_num_classes(cfg, "mini_coco_val")
    cfg.MODEL.RETINANET.NUM_CLASSES = 80
    with pytest.raises(InputError, match="has 10 classes but MODEL.RETINANET.NUM_CLASSES is 80"):
        check_num_classes(cfg, "mini_coco_val")


def test_labeled_subset_written_next_to_run(tiny_world, tmp_path):
    cfg = mini_cfg(tmp_path, LABELED_FRACTION=0.5, SUBSET_SEED=4)
    dicts = get_labeled_dataset_dicts(cfg)
    full = DatasetCatalog.get("mini_coco_train")
    record = json.load(open(tmp_path / "labeled_subset.json"))
    ids = record["datasets"]["mini_coco_train"]["image_ids"]
    assert len(ids) == round(0.5 * len(full)) and record["seed"] == 4
    assert {d["image_id"] for d in dicts} <= set(ids)
