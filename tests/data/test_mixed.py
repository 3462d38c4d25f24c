"""Tests of the student's mixed batches: ratio, sources, samplers, seeds, grouping, ranks."""

import itertools
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from ssdet.config import add_ssdet_config
from ssdet.data.mini_world import MINI_COCO_CLASSES
from ssdet.data.mixed import MixedBatch, build_mixed_train_loader, split_batch_size
from ssdet.data.pseudo_labels import LabelingProvenance, PseudoLabelShardWriter, merge_shards
from ssdet.utils.errors import InputError

from ..conftest import REPO

STUDENT_CONFIG = os.path.join(
    REPO, "configs", "mini", "retinanet_R18_FPN_S1_student_instant_test.yaml"
)


def make_pseudo_store(store_dir, class_names=MINI_COCO_CLASSES, seed=0) -> str:
    """A pseudo-label store over the tiny world's mini_imagenet_train images, with made-up boxes.

    Each image gets one confident box around its center (kept at the default 0.5 threshold) and
    one low-score box (filtered out).
    """
    listing = DatasetCatalog.get("mini_imagenet_train")
    rng = np.random.default_rng(seed)
    shard = os.path.join(os.path.dirname(str(store_dir)), os.path.basename(str(store_dir)) + ".npz")
    writer = PseudoLabelShardWriter(shard, len(class_names), score_floor=0.05)
    for index in range(len(listing)):
        # Sizes unknown (0): the mapper reads them from the image (about 48 px in the tiny world).
        center, half = rng.uniform(16, 24, size=2), rng.uniform(6, 12)
        boxes = np.array([[*(center - half), *(center + half)], [2, 2, 12, 12]])
        writer.add(
            index,
            listing[index]["file_name"],
            0,
            0,
            boxes,
            np.array([0.9, 0.3]),
            rng.integers(0, len(class_names), size=2),
        )
    merge_shards([writer.write()], store_dir, LabelingProvenance(class_names=list(class_names)))
    return str(store_dir)


def student_cfg(**overrides):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(STUDENT_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for name in path:
            node = getattr(node, name)
        setattr(node, leaf, value)
    return cfg


# -------------------------------------------------------------------------------------------------
# Batch sizes
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total,ratio,world,expected",
    [
        (8, 0.5, 1, (4, 4)),
        (16, 0.5, 8, (1, 1)),
        (8, 0.25, 2, (3, 1)),
        (5, 0.5, 1, (3, 2)),  # round(2.5) == 2: halves round to even
        (6, 0.0, 1, (6, 0)),
        (6, 1.0, 2, (0, 3)),
    ],
)
def test_split_batch_size(total, ratio, world, expected):
    assert split_batch_size(total, ratio, world) == expected


@pytest.mark.parametrize(
    "total,ratio,world,message",
    [
        (8, 0.5, 8, "each part needs at least one"),
        (4, 0.1, 1, "each part needs at least one"),
        (6, 0.5, 4, "multiple of the number of processes"),
        (8, 1.5, 1, "must be in"),
    ],
)
def test_split_batch_size_errors(total, ratio, world, message):
    with pytest.raises(InputError, match=message):
        split_batch_size(total, ratio, world)


# -------------------------------------------------------------------------------------------------
# Composition, samplers, seeds and grouping, on synthetic dicts with an identity mapper
# -------------------------------------------------------------------------------------------------


def fake_dataset(source: str, size: int, portrait_every: int = 0) -> list[dict]:
    """Dicts that the identity mapper passes through; every ``portrait_every``-th is portrait."""
    dicts = []
    for i in range(size):
        portrait = portrait_every and i % portrait_every == 0
        dicts.append(
            {
                "source": source,
                "index": i,
                "width": 40 if portrait else 60,
                "height": 60 if portrait else 40,
            }
        )
    return dicts


def identity(d: dict) -> dict:
    return d


def fake_loader(total=8, ratio=0.5, seed=3, grouping=False, human_size=10, pseudo_size=10, **kw):
    return build_mixed_train_loader(
        kw.pop("human", fake_dataset("human", human_size)),
        kw.pop("pseudo", fake_dataset("pseudo", pseudo_size)),
        human_mapper=identity,
        pseudo_mapper=identity,
        total_batch_size=total,
        pseudo_ratio=ratio,
        seed=seed,
        aspect_ratio_grouping=grouping,
        **kw,
    )


def take(loader, n: int) -> list[MixedBatch]:
    return list(itertools.islice(iter(loader), n))


@pytest.mark.parametrize("ratio,sizes", [(0.5, (4, 4)), (0.25, (6, 2)), (0.75, (2, 6))])
def test_every_batch_has_the_exact_ratio_and_sources(ratio, sizes):
    loader = fake_loader(total=8, ratio=ratio)
    assert (loader.num_human, loader.num_pseudo) == sizes
    for batch in take(loader, 50):
        assert isinstance(batch, MixedBatch)
        assert (len(batch.human), len(batch.pseudo)) == sizes
        assert all(d["source"] == "human" for d in batch.human)
        assert all(d["source"] == "pseudo" for d in batch.pseudo)


def test_both_samplers_are_infinite_and_cover_their_datasets():
    # 50 batches of 2 + 6 images: 10 epochs of the human set of 10, 100 of the pseudo set of 3.
    batches = take(fake_loader(total=8, ratio=0.75, human_size=10, pseudo_size=3), 50)
    human = [d["index"] for b in batches for d in b.human]
    pseudo = [d["index"] for b in batches for d in b.pseudo]
    # Each epoch is a permutation: every image once per pass over the dataset.
    for epoch in range(10):
        assert sorted(human[10 * epoch : 10 * epoch + 10]) == list(range(10))
    assert sorted(pseudo[:3]) == [0, 1, 2] and len(pseudo) == 300


def test_warns_when_each_pseudo_image_is_drawn_more_often_than_a_human_one(caplog):
    # 4 + 4 per step: 10 pseudo images against 20 human ones are each drawn twice as often.
    with caplog.at_level(logging.WARNING, logger="ssdet.data.mixed"):
        fake_loader(total=8, ratio=0.5, human_size=20, pseudo_size=10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Only 10 pseudo-labeled images against 20" in warnings[0]
    assert "2.0x as often" in warnings[0] and "SCORE_THRESH" in warnings[0]
    caplog.clear()
    # Drawn as often (10 and 10), or less often (6 human + 2 pseudo per step): no warning.
    with caplog.at_level(logging.WARNING, logger="ssdet.data.mixed"):
        fake_loader(total=8, ratio=0.5, human_size=10, pseudo_size=10)
        fake_loader(total=8, ratio=0.25, human_size=20, pseudo_size=10)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_one_part_only_at_ratio_0_and_1():
    for batch in take(fake_loader(total=4, ratio=0.0, pseudo=None), 5):
        assert len(batch.human) == 4 and batch.pseudo == []
    for batch in take(fake_loader(total=4, ratio=1.0, human=None), 5):
        assert batch.human == [] and len(batch.pseudo) == 4


def orders(loader, n=20) -> tuple[list[int], list[int]]:
    batches = take(loader, n)
    return [d["index"] for b in batches for d in b.human], [
        d["index"] for b in batches for d in b.pseudo
    ]


def test_seeds_give_deterministic_and_distinct_orders():
    human, pseudo = orders(fake_loader(seed=3))
    assert (human, pseudo) == orders(fake_loader(seed=3))
    # Equal-size parts are shuffled differently, and another seed changes both.
    assert human != pseudo
    other_human, other_pseudo = orders(fake_loader(seed=4))
    assert other_human != human and other_pseudo != pseudo


def test_aspect_ratio_grouping_within_each_part():
    loader = fake_loader(
        total=8,
        grouping=True,
        human=fake_dataset("human", 12, portrait_every=2),
        pseudo=fake_dataset("pseudo", 12, portrait_every=3),
    )
    orientations = {"human": set(), "pseudo": set()}
    for batch in take(loader, 40):
        for part, dicts in (("human", batch.human), ("pseudo", batch.pseudo)):
            assert len(dicts) == 4
            portrait = {d["height"] > d["width"] for d in dicts}
            assert len(portrait) == 1, "a part's batch mixes orientations"
            orientations[part] |= portrait
    assert orientations == {"human": {True, False}, "pseudo": {True, False}}


def test_each_rank_gets_its_own_shard(monkeypatch):
    """Under launch with 2 processes, the ranks' first epochs split each dataset between them."""
    import detectron2.data.build as d2_build
    from detectron2.utils import comm

    seen = {}
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(d2_build, "get_world_size", lambda: 2)
        # 8 images per step over 2 processes: 2 human + 2 pseudo each.
        loader = fake_loader(total=8, ratio=0.5, human_size=12, pseudo_size=8)
        assert (loader.num_human, loader.num_pseudo) == (2, 2)
        human, pseudo = orders(loader, n=3)
        seen[rank] = (human[:6], pseudo[:4])
    for part, size in ((0, 12), (1, 8)):
        first, second = seen[0][part], seen[1][part]
        assert not set(first) & set(second)
        assert sorted(first + second) == list(range(size))


# -------------------------------------------------------------------------------------------------
# From a config, on the tiny world and a tiny pseudo-label store
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pseudo_store(tiny_world, tmp_path_factory):
    return make_pseudo_store(tmp_path_factory.mktemp("pseudo") / "store")


def test_from_config_mixes_mini_coco_and_pseudo_labels(pseudo_store, tmp_path):
    cfg = student_cfg(OUTPUT_DIR=str(tmp_path))
    cfg.SSDET.PSEUDO_LABELS.STORE = pseudo_store
    loader = build_mixed_train_loader(cfg)
    assert (loader.num_human, loader.num_pseudo) == (2, 2)
    for batch in take(loader, 3):
        for d in batch.human:
            assert "mini_coco" in d["file_name"]
        for d in batch.pseudo:
            assert "mini_imagenet" in d["file_name"]
            # Only the confident made-up box passes SCORE_THRESH 0.5 (S4 may crop it away).
            assert len(d["instances"]) <= 1
        for d in batch.human + batch.pseudo:
            assert tuple(d["image"].shape[1:]) == tuple(cfg.SSDET.AUGMENT.OUTPUT_SIZE)
    assert os.path.isfile(tmp_path / "labeled_subset.json")


def test_from_config_input_errors(pseudo_store, tmp_path):
    cfg = student_cfg(OUTPUT_DIR=str(tmp_path))
    with pytest.raises(InputError, match="SSDET.PSEUDO_LABELS.STORE is empty"):
        build_mixed_train_loader(cfg)
    cfg.SSDET.PSEUDO_LABELS.STORE = str(tmp_path / "missing")
    with pytest.raises(InputError, match="not found"):
        build_mixed_train_loader(cfg)
    cfg.SSDET.PSEUDO_LABELS.STORE = pseudo_store
    cfg.SSDET.PSEUDO_LABELS.SCORE_THRESH = 0.95
    with pytest.raises(InputError, match="keeps no image"):
        build_mixed_train_loader(cfg)
    other = make_pseudo_store(tmp_path / "other", class_names=[f"c{i}" for i in range(10)])
    cfg.SSDET.PSEUDO_LABELS.SCORE_THRESH = 0.5
    cfg.SSDET.PSEUDO_LABELS.STORE = other
    with pytest.raises(InputError, match="same classes"):
        build_mixed_train_loader(cfg)
    # Human labels only: no store needed.
    cfg.SSDET.PSEUDO_LABELS.STORE = ""
    cfg.SSDET.SELF_TRAINING.PSEUDO_RATIO = 0.0
    assert build_mixed_train_loader(cfg).num_pseudo == 0


def test_ignore_regions_reach_the_student_batches(pseudo_store, tmp_path):
    """Through the pseudo part's mapper, ignore regions stay instances of class -1."""
    cfg = student_cfg(OUTPUT_DIR=str(tmp_path))
    cfg.SSDET.PSEUDO_LABELS.STORE = pseudo_store
    cfg.SSDET.PSEUDO_LABELS.IGNORE_SCORE_THRESH = 0.2  # the made-up 0.3 boxes
    cfg.SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY = "S1"
    classes = torch.cat(
        [
            d["instances"].gt_classes
            for b in take(build_mixed_train_loader(cfg), 4)
            for d in b.pseudo
        ]
    )
    assert (classes == -1).any() and (classes >= 0).any()
