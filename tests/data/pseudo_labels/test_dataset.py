"""Tests of the Detectron2 dataset of a selection: dicts, workers, mapper, ignore regions, memory,
registration."""

import glob
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.common import MapDataset
from detectron2.data.dataset_mapper import DatasetMapper
from detectron2.data.samplers import TrainingSampler
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage
from PIL import Image

from ssdet.data.pseudo_labels import (
    PseudoLabelDataset,
    PseudoLabelFilter,
    PseudoLabelShardWriter,
    merge_shards,
)

from .conftest import CLASSES, make_provenance, mapped_store_kb, random_detections, write_store


def test_dataset_yields_detectron2_dicts(filter_store):
    dataset = PseudoLabelDataset(PseudoLabelFilter().apply(filter_store))
    assert len(dataset) == 2
    record = dataset[1]
    assert record["file_name"] == "1.jpg" and record["image_id"] == 1
    assert (record["height"], record["width"]) == (100, 100)
    assert record["annotations"] == [
        {"bbox": [0, 0, 9, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2, "score": s}
        for s in (pytest.approx(0.55), 0.5)
    ]
    assert dataset[-1]["file_name"] == "1.jpg"
    with pytest.raises(IndexError):
        dataset[2]
    assert [r["image_id"] for r in dataset] == [0, 1]  # Sequence iteration stops at IndexError
    mapped = MapDataset(dataset, lambda r: len(r["annotations"]))
    sampler = iter(TrainingSampler(len(mapped), seed=0))
    assert {mapped[next(sampler)] for _ in range(10)} == {2}


def test_dataset_omits_unknown_sizes(tmp_path):
    store = write_store(tmp_path, [("a.jpg", 0, 0, [(0, 0, 1, 1, 0.9, 0)])])
    record = PseudoLabelDataset(PseudoLabelFilter().apply(store))[0]
    assert "height" not in record and "width" not in record


def _identity(batch):
    return batch


def test_dataset_in_dataloader_workers(balance_store):
    dataset = PseudoLabelDataset(
        PseudoLabelFilter(balance_classes=True, images_per_class=4).apply(balance_store)
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, num_workers=2, collate_fn=_identity, shuffle=False
    )
    records = [r for batch in loader for r in batch]
    assert [r["file_name"] for r in records] == [dataset[i]["file_name"] for i in range(12)]


def test_dataset_through_dataset_mapper(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / name)
    store = write_store(
        tmp_path,
        [("a.png", 40, 60, [(5, 5, 20, 30, 0.9, 1)]), ("b.png", 0, 0, [(1, 1, 9, 9, 0.8, 2)])],
        image_root=str(tmp_path),
    )
    dataset = PseudoLabelDataset(PseudoLabelFilter().apply(store))
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    out = MapDataset(dataset, mapper)[0]
    assert tuple(out["image"].shape) == (3, 40, 60)
    assert out["instances"].gt_classes.tolist() == [1]
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(), [[5, 5, 20, 30]])
    assert MapDataset(dataset, mapper)[1]["width"] == 60  # unknown size taken from the image


def test_ignore_regions(filter_store):
    """Boxes not kept but above the ignore threshold come after the kept ones with class -1."""
    pseudo_filter = PseudoLabelFilter(
        score_thresh=0.5, max_boxes_per_image=1, min_box_size=3, ignore_score_thresh=0.3
    )
    selection = pseudo_filter.apply(filter_store)
    dataset = PseudoLabelDataset(selection)
    assert len(dataset) == 2  # image 2 has only an ignore-level box at 0.2 < 0.3: still dropped
    image0, image1 = dataset[0]["annotations"], dataset[1]["annotations"]
    # image 0: person 0.9 kept; the 2x2 car 0.6 (under MIN_BOX_SIZE) and dog 0.4 are ignored.
    assert [(a["category_id"], a["score"]) for a in image0] == [
        (0, pytest.approx(0.9)),
        (-1, pytest.approx(0.6)),
        (-1, pytest.approx(0.4)),
    ]
    assert image0[1]["bbox"] == [0, 0, 2, 2]
    # image 1: dog 0.55 kept; dog 0.5 (over max_boxes_per_image) and person 0.45 ignored.
    assert [a["category_id"] for a in image1] == [2, -1, -1]
    np.testing.assert_array_equal(np.diff(selection.ignore_offsets), [2, 2, 0])
    # Off by default: no ignore regions, the kept boxes only.
    plain = PseudoLabelDataset(PseudoLabelFilter(score_thresh=0.5).apply(filter_store))
    assert plain.selection.ignore_rows is None
    assert all(a["category_id"] >= 0 for r in plain for a in r["annotations"])


def test_ignore_regions_become_ignored_anchors_in_retinanet():
    """Detectron2's RetinaNet labels anchors matched to a class -1 box -1, which its losses skip:
    the mechanism the ignore regions rely on."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).train()
    image = {"image": torch.zeros(3, 128, 128), "height": 128, "width": 128}

    def losses_and_labels(boxes, classes):
        instances = Instances((128, 128))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor(classes)
        with EventStorage():
            losses = model([{**image, "instances": instances}])
        features = model.backbone(model.preprocess_image([image]).tensor)
        anchors = model.anchor_generator([features[f] for f in model.head_in_features])
        (labels,), _ = model.label_anchors(anchors, [instances])
        return losses, labels

    person, ignored = [10, 10, 60, 60], [70, 70, 120, 120]
    losses, labels = losses_and_labels([person, ignored], [1, -1])
    assert (labels == 1).any() and (labels == -1).any() and (labels == 3).any()
    assert all(torch.isfinite(v) for v in losses.values())
    # Without the ignore region, its anchors would be background.
    _, without = losses_and_labels([person], [1])
    assert ((labels == -1) & (without == 3)).sum() > ((labels == 3) & (without == -1)).sum()


def _expected_record(store, selection, idx):
    """dataset[idx] computed from the memory-mapped arrays, as an independent reference."""
    i = int(selection.image_index[idx])
    rows = selection.box_rows[selection.box_offsets[i] : selection.box_offsets[i + 1]]
    return (
        store.file_name(i),
        int(store.image_ids[i]),
        store.boxes[rows].tolist(),
        store.classes[rows].tolist(),
        store.scores[rows].tolist(),
    )


def test_dataset_items_equal_the_mapped_arrays(tmp_path):
    images = [
        (name, h, w, np.column_stack([boxes, scores, classes]))
        for name, h, w, scores, boxes, classes in random_detections(60, seed=3)
    ]
    store = write_store(tmp_path, images, image_root="/data/root")
    for pseudo_filter in (
        PseudoLabelFilter(score_thresh=0.3, max_boxes_per_image=2),
        PseudoLabelFilter(score_thresh=0.6, keep_empty_images=True),
        PseudoLabelFilter(balance_classes=True, images_per_class=9),
    ):
        selection = pseudo_filter.apply(store)
        dataset = PseudoLabelDataset(selection)
        assert len(dataset) > 0
        for idx in range(len(dataset)):
            record = dataset[idx]
            name, image_id, boxes, classes, scores = _expected_record(store, selection, idx)
            assert record["file_name"] == name and name.startswith("/data/root/img/")
            assert record["image_id"] == image_id
            assert [a["bbox"] for a in record["annotations"]] == boxes
            assert [a["category_id"] for a in record["annotations"]] == classes
            assert [a["score"] for a in record["annotations"]] == scores
        # Survives pickling (spawned workers) with its own file descriptors.
        clone = pickle.loads(pickle.dumps(dataset))
        assert clone[len(dataset) - 1] == dataset[len(dataset) - 1]


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc smaps")
def test_dataset_does_not_keep_store_pages_resident(tmp_path):
    """Iterating every item leaves only the per-image columns of the store mapped in the process,
    where indexing the memory maps would leave all of it resident: a worker's memory stays flat."""
    rng = np.random.default_rng(0)
    n, k = 4000, 8
    writer = PseudoLabelShardWriter(tmp_path / "big.npz", len(CLASSES), score_floor=0.0)
    for i in range(n):
        xy = rng.uniform(0, 500, size=(k, 2))
        boxes = np.concatenate([xy, xy + 20], axis=1)
        writer.add(
            i, f"images/{i:06d}.jpg", 480, 640, boxes, rng.uniform(0, 1, k), np.zeros(k, int)
        )
    store = merge_shards([writer.write()], tmp_path / "big", make_provenance())
    store_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(store.path, "*.npy")))
    assert store_bytes > 400_000
    selection = PseudoLabelFilter.keep_all().apply(store)  # reads whole columns
    assert mapped_store_kb(store.path) > 0
    dataset = PseudoLabelDataset(selection)
    for idx in rng.permutation(len(dataset)).tolist():
        dataset[idx]
    # Only the per-image columns (24 bytes per image) stay mapped; boxes, scores, classes and file
    # names (most of the store) are read with pread.
    per_image = sum(
        getattr(store, c).nbytes for c in ("image_ids", "heights", "widths", "file_name_offsets")
    )
    assert mapped_store_kb(store.path) * 1024 <= per_image + 4 * 4096 < store_bytes / 5
    # The reference: the same reads through the maps make the store resident.
    for i in range(n):
        store.boxes[store.image_offsets[i] : store.image_offsets[i + 1]].tolist()
    assert mapped_store_kb(store.path) * 1024 >= 0.9 * store.boxes.nbytes


def test_register_dataset(tmp_path, filter_store):
    from ssdet.data.pseudo_labels import register_pseudo_label_dataset

    name = "test_pseudo_labels_register"
    register_pseudo_label_dataset(name, filter_store.path, PseudoLabelFilter(score_thresh=0.3))
    try:
        assert MetadataCatalog.get(name).thing_classes == CLASSES
        dataset = DatasetCatalog.get(name)
        assert isinstance(dataset, PseudoLabelDataset) and len(dataset) == 2
        # Detectron2's loader path returns the dataset itself, never a list of dicts.
        assert get_detection_dataset_dicts([name]) is not None
        assert isinstance(get_detection_dataset_dicts([name]), PseudoLabelDataset)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
