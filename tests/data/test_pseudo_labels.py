"""Tests of the pseudo-label store: writer, merge, filter, balancing, dataset, COCO JSON."""

import glob
import json
import logging
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
    LabelingProvenance,
    PseudoLabelDataset,
    PseudoLabelFilter,
    PseudoLabelShardWriter,
    PseudoLabelStore,
    PseudoLabelStoreError,
    export_coco_annotations,
    export_coco_results,
    import_coco_json,
    merge_shards,
)
from ssdet.utils.errors import InputError

CLASSES = ["person", "car", "dog"]


def _provenance(**kwargs) -> LabelingProvenance:
    defaults = dict(
        class_names=list(CLASSES),
        teacher_config_path="configs/teacher.yaml",
        teacher_config_text="MODEL:\n  META_ARCHITECTURE: RetinaNet\n",
        teacher_weights_path="teacher.pth",
        teacher_weights_sha256="ab" * 32,
        listing_path="listing.txt",
        listing_sha256="cd" * 32,
    )
    defaults.update(kwargs)
    return LabelingProvenance(**defaults)


def _write_store(tmp_path, images, name="store", floor=0.0, **provenance):
    """Write ``images`` (file name, h, w, [(x1, y1, x2, y2, score, class), ...]) as one shard."""
    writer = PseudoLabelShardWriter(tmp_path / f"{name}.npz", len(CLASSES), score_floor=floor)
    for index, (file_name, h, w, dets) in enumerate(images):
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 6)
        writer.add(index, file_name, h, w, dets[:, :4], dets[:, 4], dets[:, 5].astype(int))
    return merge_shards([writer.write()], tmp_path / name, _provenance(**provenance))


def _random_detections(num_images, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0, 50, size=(k, 2))
        wh = rng.uniform(1, 30, size=(k, 2))
        images.append(
            (
                f"img/{i:03d}.jpg",
                64,
                80,
                rng.uniform(0, 1, size=k).astype(np.float32),
                np.concatenate([xy, xy + wh], axis=1),
                rng.integers(0, len(CLASSES), size=k),
            )
        )
    return images


def _shards(tmp_path, images, groups, tag):
    """Write one shard per group of image indices, with a failure for every 7th image."""
    paths = []
    for g, indices in enumerate(groups):
        writer = PseudoLabelShardWriter(tmp_path / f"{tag}-{g}.npz", len(CLASSES), 0.05)
        for i in indices:
            name, h, w, scores, boxes, classes = images[i]
            if i % 7 == 3:
                writer.add_failure(i, name, "cannot decode")
            else:
                writer.add(i, name, h, w, boxes, scores, classes)
        paths.append(writer.write())
    return paths


# -------------------------------------------------------------------------------------------------
# Store, writer, merge
# -------------------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    writer = PseudoLabelShardWriter(tmp_path / "s.npz", len(CLASSES), score_floor=0.05)
    writer.add(
        5,
        "b/é.jpg",
        10,
        20,
        np.array([[0, 0, 5, 5], [1, 1, 4, 4], [2, 2, 9, 9]]),
        np.array([0.3, 0.9, 0.01]),  # 0.01 is below the floor; 0.9 must come first
        np.array([1, 2, 0]),
    )
    writer.add(2, "a.jpg", 0, 0, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    writer.add_failure(3, "broken.jpg", "truncated JPEG")
    assert len(writer) == 3
    store = merge_shards([writer.write()], tmp_path / "store", _provenance(listing_size=None))

    assert store.num_images == 2 and store.num_boxes == 2
    np.testing.assert_array_equal(store.image_ids, [2, 5])  # listing order
    np.testing.assert_array_equal(store.image_offsets, [0, 0, 2])
    np.testing.assert_array_equal(store.boxes, [[1, 1, 4, 4], [0, 0, 5, 5]])
    np.testing.assert_allclose(store.scores, [0.9, 0.3])
    np.testing.assert_array_equal(store.classes, [2, 1])
    np.testing.assert_array_equal(store.heights, [0, 10])
    assert [store.file_name(i) for i in range(2)] == ["a.jpg", "b/é.jpg"]

    meta = store.metadata
    assert meta["counts"] == {"images": 2, "boxes": 2, "failed_images": 1}
    assert meta["failed_images"] == [
        {"index": 3, "file_name": "broken.jpg", "reason": "truncated JPEG"}
    ]
    assert meta["class_names"] == CLASSES and meta["score_floor"] == pytest.approx(0.05)
    assert meta["teacher"]["weights_sha256"] == "ab" * 32
    assert len(meta["teacher"]["config_sha256"]) == 64
    assert {"ssdet", "detectron2"} <= set(meta["versions"]) and meta["created"]


def test_add_instances(tmp_path):
    instances = Instances((30, 40))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    instances.scores = torch.tensor([0.7])
    instances.pred_classes = torch.tensor([2])
    writer = PseudoLabelShardWriter(tmp_path / "s.npz", len(CLASSES))
    writer.add_instances(0, "x.jpg", instances)
    store = merge_shards([writer.write()], tmp_path / "store", _provenance())
    assert (store.heights[0], store.widths[0]) == (30, 40)
    np.testing.assert_array_equal(store.boxes, [[1, 2, 3, 4]])
    assert store.classes[0] == 2


def test_writer_rejects_bad_detections(tmp_path):
    writer = PseudoLabelShardWriter(tmp_path / "s.npz", len(CLASSES))
    with pytest.raises(ValueError, match="class ids"):
        writer.add(0, "x", 1, 1, np.zeros((1, 4)), [0.9], [3])
    with pytest.raises(ValueError, match="non-finite"):
        writer.add(0, "x", 1, 1, [[0, 0, np.nan, 1]], [0.9], [0])


def test_no_pickle_anywhere(tmp_path):
    store = _write_store(tmp_path, [("a.jpg", 4, 4, [(0, 0, 1, 1, 0.9, 0)])])
    for name in os.listdir(store.path):
        if name.endswith(".npy"):
            array = np.load(os.path.join(store.path, name), mmap_mode="r", allow_pickle=False)
            assert array.dtype != object
    with np.load(tmp_path / "store.npz", allow_pickle=False) as shard:
        assert all(shard[k].dtype != object for k in shard.files)


def test_merge_is_canonical(tmp_path):
    """Any sharding and any shard order give byte-identical stores."""
    images = _random_detections(23)
    n = len(images)
    layouts = {
        "one": [range(n)],
        "blocks": [range(0, 9), range(9, 15), range(15, n)],
        "strided": [range(r, n, 4) for r in range(4)],
        "strided_reversed": [range(r, n, 4) for r in reversed(range(4))],
        "with_empty_shard": [range(0), range(n - 1, -1, -1)],
    }
    stores = {
        tag: merge_shards(
            _shards(tmp_path, images, groups, tag), tmp_path / tag, _provenance(listing_size=n)
        )
        for tag, groups in layouts.items()
    }
    reference = stores["one"]
    assert reference.num_images == n - len(range(3, n, 7)) and reference.num_boxes > 0
    for tag, store in stores.items():
        for name in sorted(os.listdir(reference.path)):
            with open(os.path.join(reference.path, name), "rb") as a:
                with open(os.path.join(store.path, name), "rb") as b:
                    if name != "metadata.json":
                        assert a.read() == b.read(), (tag, name)
        meta_a, meta_b = reference.metadata, store.metadata
        meta_a.pop("created"), meta_b.pop("created")
        assert meta_a == meta_b, tag


def test_merge_rejects_duplicates_missing_and_mixed_floors(tmp_path):
    images = _random_detections(6)
    paths = _shards(tmp_path, images, [range(0, 4), range(3, 6)], "dup")
    with pytest.raises(InputError, match="more than one"):
        merge_shards(paths, tmp_path / "dup", _provenance())
    paths = _shards(tmp_path, images, [range(0, 4)], "missing")
    with pytest.raises(InputError, match="2 missing"):
        merge_shards(paths, tmp_path / "missing", _provenance(listing_size=6))
    other = PseudoLabelShardWriter(tmp_path / "floor.npz", len(CLASSES), score_floor=0.3)
    other.add(5, "x", 1, 1, np.zeros((0, 4)), [], [])
    with pytest.raises(InputError, match="score floors"):
        merge_shards(paths + [other.write()], tmp_path / "floors", _provenance())
    with pytest.raises(InputError, match="classes"):
        merge_shards(paths, tmp_path / "classes", _provenance(class_names=["a"]))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_merge_refuses_to_overwrite_unless_asked(tmp_path):
    store = _write_store(tmp_path, [("a.jpg", 4, 4, [(0, 0, 1, 1, 0.9, 0)])])
    with pytest.raises(FileExistsError):
        merge_shards([tmp_path / "store.npz"], store.path, _provenance())
    writer = PseudoLabelShardWriter(tmp_path / "new.npz", len(CLASSES))
    writer.add(0, "b.jpg", 4, 4, np.zeros((0, 4)), [], [])
    merge_shards([writer.write()], store.path, _provenance(), overwrite=True)
    assert PseudoLabelStore.open(store.path).file_name(0) == "b.jpg"
    assert sorted(os.listdir(tmp_path)) == ["new.npz", "store", "store.npz"]


def test_incomplete_store_is_refused(tmp_path):
    store = _write_store(tmp_path, [("a.jpg", 4, 4, [(0, 0, 1, 1, 0.9, 0)])])
    os.remove(os.path.join(store.path, "scores.npy"))
    with pytest.raises(
        PseudoLabelStoreError, match="incomplete or not a pseudo-label store.*scores"
    ):
        PseudoLabelStore.open(store.path)
    os.remove(os.path.join(store.path, "metadata.json"))
    with pytest.raises(PseudoLabelStoreError, match="incomplete or not a pseudo-label store"):
        PseudoLabelStore.open(store.path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metadata.json").write_text('{"format": "something else"}')
    with pytest.raises(PseudoLabelStoreError, match="incomplete or not a pseudo-label store"):
        PseudoLabelStore.open(tmp_path / "other")


def test_store_pickles_as_its_path(tmp_path):
    images = [("a.jpg", 4, 4, [(0, 0, 1, 1, 0.9, 0)] * 50)]
    store = _write_store(tmp_path, images)
    data = pickle.dumps(store)
    assert len(data) < 1000  # the path, not the arrays
    np.testing.assert_array_equal(pickle.loads(data).boxes, store.boxes)
    # A dataset sent to spawned DataLoader workers comes back whole, its store re-mapped.
    dataset = PseudoLabelDataset(PseudoLabelFilter().apply(store))
    assert pickle.loads(pickle.dumps(dataset))[0] == dataset[0]


# -------------------------------------------------------------------------------------------------
# Filter and class balancing
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def filter_store(tmp_path):
    return _write_store(
        tmp_path,
        [
            # image 0: person 0.9 (10x10), car 0.6 (2x2 px), dog 0.4
            (
                "0.jpg",
                100,
                100,
                [(0, 0, 10, 10, 0.9, 0), (0, 0, 2, 2, 0.6, 1), (0, 0, 8, 8, 0.4, 2)],
            ),
            # image 1: dog 0.55, dog 0.5 (exactly the threshold), person 0.45
            (
                "1.jpg",
                100,
                100,
                [(0, 0, 9, 9, 0.55, 2), (0, 0, 9, 9, 0.5, 2), (1, 1, 9, 9, 0.45, 0)],
            ),
            # image 2: only low scores
            ("2.jpg", 100, 100, [(0, 0, 9, 9, 0.2, 1)]),
        ],
    )


def _kept(selection):
    """Per base image: the kept (class, score) pairs."""
    store = selection.store
    out = []
    for i in range(store.num_images):
        rows = selection.box_rows[selection.box_offsets[i] : selection.box_offsets[i + 1]]
        out.append([(int(store.classes[r]), round(float(store.scores[r]), 2)) for r in rows])
    return out


def test_filter_score_threshold(filter_store):
    selection = PseudoLabelFilter().apply(filter_store)
    assert _kept(selection) == [[(0, 0.9), (1, 0.6)], [(2, 0.55), (2, 0.5)], []]
    np.testing.assert_array_equal(selection.image_index, [0, 1])  # empty image dropped
    np.testing.assert_array_equal(selection.image_classes, [0, 2, -1])
    with_empty = PseudoLabelFilter(keep_empty_images=True).apply(filter_store)
    np.testing.assert_array_equal(with_empty.image_index, [0, 1, 2])


def test_filter_per_class_thresholds(filter_store):
    selection = PseudoLabelFilter(class_score_threshs={"dog": 0.3, 0: 0.95}).apply(filter_store)
    assert _kept(selection) == [[(1, 0.6), (2, 0.4)], [(2, 0.55), (2, 0.5)], []]
    assert selection.image_classes[0] == 1  # the top *kept* box decides the image's class
    with pytest.raises(InputError, match="Unknown class 'cat'"):
        PseudoLabelFilter(class_score_threshs={"cat": 0.3}).apply(filter_store)


def test_filter_max_boxes_and_min_size(filter_store):
    top1 = PseudoLabelFilter(score_thresh=0.3, max_boxes_per_image=1).apply(filter_store)
    assert _kept(top1) == [[(0, 0.9)], [(2, 0.55)], []]
    sized = PseudoLabelFilter(score_thresh=0.3, min_box_size=5).apply(filter_store)
    assert _kept(sized) == [[(0, 0.9), (2, 0.4)], [(2, 0.55), (2, 0.5), (0, 0.45)], []]


def test_filter_from_config():
    from detectron2.config import get_cfg

    from ssdet.config import add_ssdet_config

    cfg = get_cfg()
    add_ssdet_config(cfg)
    assert PseudoLabelFilter.from_config(cfg) == PseudoLabelFilter()
    cfg.merge_from_list(
        [
            "SSDET.PSEUDO_LABELS.CLASS_SCORE_THRESHS",
            [["dog", 0.3], [0, 0.7]],
            "SSDET.PSEUDO_LABELS.BALANCE_CLASSES",
            True,
            "SSDET.PSEUDO_LABELS.IMAGES_PER_CLASS",
            7,
        ]
    )
    f = PseudoLabelFilter.from_config(cfg)
    assert f.class_score_threshs == {"dog": 0.3, 0: 0.7}
    assert f.balance_classes and f.images_per_class == 7
    with pytest.raises(ValueError, match="Unknown class-balancing subsample rule"):
        PseudoLabelFilter(balance_subsample="oldest")


@pytest.fixture
def balance_store(tmp_path):
    # Top classes: person x6 (scores 0.60..0.95), car x2, dog x1, and two images without a box.
    images = [(f"p{k}.jpg", 10, 10, [(0, 0, 5, 5, 0.6 + 0.07 * k, 0)]) for k in range(6)]
    images += [
        (f"c{k}.jpg", 10, 10, [(0, 0, 5, 5, 0.8, 1), (0, 0, 5, 5, 0.7, 0)]) for k in range(2)
    ]
    images += [("d.jpg", 10, 10, [(0, 0, 5, 5, 0.9, 2)])]
    images += [(f"e{k}.jpg", 10, 10, [(0, 0, 5, 5, 0.1, 2)]) for k in range(2)]
    return _write_store(tmp_path, images)


def _per_class(selection):
    return np.bincount(selection.image_classes[selection.image_index], minlength=len(CLASSES))


def test_balancing_hits_the_target(balance_store):
    f = PseudoLabelFilter(balance_classes=True, images_per_class=4)
    selection = f.apply(balance_store)
    np.testing.assert_array_equal(_per_class(selection), [4, 4, 4])
    index = selection.image_index
    # Too many persons: the 4 with the highest top score (images 2..5) are kept, once each.
    np.testing.assert_array_equal(index[selection.image_classes[index] == 0], [2, 3, 4, 5])
    # Too few cars: both duplicated; the single dog image repeated 4 times.
    np.testing.assert_array_equal(index[selection.image_classes[index] == 1], [6, 6, 7, 7])
    np.testing.assert_array_equal(index[selection.image_classes[index] == 2], [8, 8, 8, 8])
    assert np.all(np.diff(index) >= 0)
    # Target 0 is the mean count over the classes present: (6 + 2 + 1) / 3 = 3.
    mean = PseudoLabelFilter(balance_classes=True).apply(balance_store)
    np.testing.assert_array_equal(_per_class(mean), [3, 3, 3])
    # Empty images are kept once each, outside the balancing.
    empty = PseudoLabelFilter(balance_classes=True, keep_empty_images=True).apply(balance_store)
    assert len(empty.image_index) == 9 + 2


def test_balancing_is_deterministic_under_seed(balance_store):
    def draw(seed):
        return PseudoLabelFilter(
            balance_classes=True, images_per_class=5, balance_subsample="random", balance_seed=seed
        ).apply(balance_store)

    first, again = draw(0), draw(0)
    np.testing.assert_array_equal(first.image_index, again.image_index)
    np.testing.assert_array_equal(_per_class(first), [5, 5, 5])
    # The car remainder (5 = 2 * 2 + 1) and the person subsample are seeded draws.
    draws = {tuple(draw(seed).image_index.tolist()) for seed in range(8)}
    assert len(draws) > 1


# -------------------------------------------------------------------------------------------------
# Dataset
# -------------------------------------------------------------------------------------------------


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
    store = _write_store(tmp_path, [("a.jpg", 0, 0, [(0, 0, 1, 1, 0.9, 0)])])
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
    store = _write_store(
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


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(score_thresh=0.5, ignore_score_thresh=0.5),
        dict(score_thresh=0.5, class_score_threshs={"dog": 0.2}, ignore_score_thresh=0.3),
        dict(ignore_score_thresh=-0.1),
    ],
)
def test_ignore_threshold_must_be_below_keep_thresholds(kwargs):
    with pytest.raises(InputError, match="IGNORE_SCORE_THRESH"):
        PseudoLabelFilter(**kwargs)


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


def _mapped_store_kb(path: str) -> int:
    """Resident kB of this process's mappings of files under ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) >= 6 and fields[5].startswith(path + os.sep)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


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
        for name, h, w, scores, boxes, classes in _random_detections(60, seed=3)
    ]
    store = _write_store(tmp_path, images, image_root="/data/root")
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


def test_column_reader_rows(tmp_path, filter_store):
    reader = filter_store.reader()
    for name in ("boxes", "scores", "classes", "image_ids", "file_name_bytes"):
        column = getattr(filter_store, name)
        for start, stop in ((0, len(column)), (1, 2), (len(column) - 1, len(column)), (1, 1)):
            got = reader.rows(name, start, stop)
            assert got.dtype == column.dtype
            np.testing.assert_array_equal(got, column[start:stop])
    with pytest.raises(PseudoLabelStoreError, match="short read of scores.npy"):
        reader.rows("scores", 0, len(filter_store.scores) + 5)


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
    store = merge_shards([writer.write()], tmp_path / "big", _provenance())
    store_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(store.path, "*.npy")))
    assert store_bytes > 400_000
    selection = PseudoLabelFilter.keep_all().apply(store)  # reads whole columns
    assert _mapped_store_kb(store.path) > 0
    dataset = PseudoLabelDataset(selection)
    for idx in rng.permutation(len(dataset)).tolist():
        dataset[idx]
    # Only the per-image columns (24 bytes per image) stay mapped; boxes, scores, classes and file
    # names (most of the store) are read with pread.
    per_image = sum(
        getattr(store, c).nbytes for c in ("image_ids", "heights", "widths", "file_name_offsets")
    )
    assert _mapped_store_kb(store.path) * 1024 <= per_image + 4 * 4096 < store_bytes / 5
    # The reference: the same reads through the maps make the store resident.
    for i in range(n):
        store.boxes[store.image_offsets[i] : store.image_offsets[i + 1]].tolist()
    assert _mapped_store_kb(store.path) * 1024 >= 0.9 * store.boxes.nbytes


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


# -------------------------------------------------------------------------------------------------
# COCO JSON
# -------------------------------------------------------------------------------------------------


def test_coco_round_trip(tmp_path):
    images = _random_detections(12, seed=3)
    store = merge_shards(
        _shards(tmp_path, images, [range(12)], "coco"), tmp_path / "s", _provenance()
    )
    everything = PseudoLabelFilter.keep_all().apply(store)
    category_ids = [1, 3, 18]

    export_coco_annotations(everything, tmp_path / "ann.json", category_ids)
    export_coco_results(everything, tmp_path / "res.json", category_ids)
    from_ann = import_coco_json(tmp_path / "ann.json", tmp_path / "from_ann")
    from_res = import_coco_json(
        tmp_path / "res.json", tmp_path / "from_res", image_list_json=tmp_path / "ann.json"
    )
    for imported in (from_ann, from_res):
        assert imported.class_names == CLASSES
        for column in ("image_offsets", "image_ids", "heights", "widths", "boxes", "scores"):
            np.testing.assert_array_equal(getattr(imported, column), getattr(store, column))
        np.testing.assert_array_equal(imported.classes, store.classes)
        assert [imported.file_name(i) for i in range(store.num_images)] == [
            store.file_name(i) for i in range(store.num_images)
        ]

    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "ann.json"))
    results = coco.loadRes(str(tmp_path / "res.json"))
    assert len(results.getAnnIds()) == store.num_boxes
    with open(tmp_path / "ann.json") as f:
        assert all("score" in a for a in json.load(f)["annotations"])


def test_coco_import_maps_categories_by_name(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "x.jpg", "height": 5, "width": 5}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [1, 1, 2, 2], "score": 0.8},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    store = import_coco_json(tmp_path / "ann.json", tmp_path / "s", class_names=CLASSES)
    assert store.class_names == CLASSES
    np.testing.assert_array_equal(store.classes, [0, 2])  # person (0.8) first, then dog
    np.testing.assert_array_equal(store.boxes, [[1, 1, 3, 3], [0, 0, 2, 2]])
    with pytest.raises(InputError, match="image_list_json"):
        (tmp_path / "res.json").write_text("[]")
        import_coco_json(tmp_path / "res.json", tmp_path / "r")


# -------------------------------------------------------------------------------------------------
# The "no pseudo boxes" diagnostic
# -------------------------------------------------------------------------------------------------


def test_almost_empty_warning(filter_store, caplog):
    with caplog.at_level(logging.WARNING, logger="ssdet.data.pseudo_labels"):
        PseudoLabelFilter().apply(filter_store)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="ssdet.data.pseudo_labels"):
        selection = PseudoLabelFilter(score_thresh=0.99).apply(filter_store)
    (record,) = caplog.records
    message = record.getMessage()
    assert "Almost no pseudo boxes" in message
    assert "SSDET.PSEUDO_LABELS.SCORE_THRESH=0.99" in message
    assert "Lower SSDET.PSEUDO_LABELS.SCORE_THRESH" in message and "0.900" in message
    assert selection.num_kept_boxes == 0
