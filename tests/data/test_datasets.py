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
    datasets,
    get_labeled_dataset_dicts,
    register_coco_dataset,
)
from ssdet.data.ground_truth import find_ground_truth
from ssdet.data.labeling import ImageListing
from ssdet.data.mini_world import MINI_COCO_CLASSES, MINI_IMAGENET_CLASSES
from ssdet.data.pseudo_labels import PseudoLabelFilter
from ssdet.data.pseudo_labels.report import build_report
from ssdet.engine.defaults import load_cfg
from ssdet.utils.errors import InputError

from ..conftest import REPO
from .pseudo_labels.conftest import write_store


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


def test_unknown_dataset_name_lists_close_matches_only():
    with pytest.raises(InputError) as error:
        check_registered(["mini_coco_trian"])
    message = str(error.value)
    assert message.startswith("Unknown dataset 'mini_coco_trian'. Did you mean 'mini_coco_train'")
    assert "coco_2017_val" not in message and "lvis" not in message
    assert "SSDET.DATA.REGISTER" in message
    with pytest.raises(InputError, match="'no_such_set'. No registered dataset has a similar"):
        check_registered(["no_such_set"])


INSTANT = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")


@pytest.fixture
def forget_registrations():
    """Undo the config registrations a test makes (they are process-wide)."""
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        datasets._CONFIG_REGISTERED.pop(name, None)


def test_register_from_config(tiny_world, tmp_path, forget_registrations):
    json_file = os.path.join(tiny_world, "mini_coco", "annotations", "instances_val.json")
    images = os.path.join(tiny_world, "mini_coco", "val")
    folder = os.path.join(tiny_world, "mini_imagenet", "val")
    register = f"[['t_own', '{json_file}', '{images}'], ['t_own_folder', '', '{folder}']]"
    for _ in range(2):  # every tool loads its config more than once
        load_cfg(INSTANT, ["SSDET.DATA.REGISTER", register])
    own = DatasetCatalog.get("t_own")
    assert [d["image_id"] for d in own] == [
        d["image_id"] for d in DatasetCatalog.get("mini_coco_val")
    ]
    assert MetadataCatalog.get("t_own").thing_classes == MINI_COCO_CLASSES
    assert MetadataCatalog.get("t_own").evaluator_type == "coco"
    assert isinstance(DatasetCatalog.get("t_own_folder"), ImageFolderListing)

    for entry, message in [
        ("[['t_bad', 'a.json']]", "is not \\[NAME, JSON, IMAGE_ROOT\\]"),
        ("[['mini_coco_val', 'a.json', 'img']]", "'mini_coco_val' is already a registered"),
    ]:
        with pytest.raises(InputError, match=message):
            load_cfg(INSTANT, ["SSDET.DATA.REGISTER", entry])


def test_remainder_is_the_rest_of_the_train_set(tiny_world, tmp_path, forget_registrations):
    cfg = load_cfg(INSTANT, ["SSDET.DATA.LABELED_FRACTION", "0.25", "OUTPUT_DIR", str(tmp_path)])
    labeled = {d["image_id"] for d in get_labeled_dataset_dicts(cfg)}
    remainder = DatasetCatalog.get("mini_coco_train_remainder")
    rest = {d["image_id"] for d in remainder}
    assert labeled and rest and not labeled & rest
    assert labeled | rest == {d["image_id"] for d in DatasetCatalog.get("mini_coco_train")}
    assert all(d["annotations"] is not None for d in remainder)

    # Labeling the remainder finds its ground truth: the report has precision and recall.
    listing = ImageListing.from_input("mini_coco_train_remainder")
    assert len(listing) == len(rest)
    names = [listing.relative_path(i) for i in range(len(listing))]
    boxes = [(name, 64, 64, [(1, 1, 30, 30, 0.9, 0)]) for name in names]
    store = write_store(tmp_path, boxes, image_root=listing.root)
    truth = find_ground_truth(store)
    assert truth == MetadataCatalog.get("mini_coco_train").json_file
    report = build_report(PseudoLabelFilter().apply(store), ground_truth=truth)
    assert report.ground_truth["num_images"] == len(rest)
    # The store's test classes are not the mini world's: its objects count as novel.
    assert report.ground_truth["num_gt_boxes"] + report.ground_truth["num_novel_gt_boxes"] > 0

    load_cfg(INSTANT)  # LABELED_FRACTION 1.0: every image is labeled
    with pytest.raises(InputError, match="'mini_coco_train_remainder' is empty"):
        DatasetCatalog.get("mini_coco_train_remainder")


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
