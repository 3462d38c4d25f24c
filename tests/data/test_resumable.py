"""ssdet/data/resumable.py: TrainingSampler's stream, and batch n the same whichever batch a run
began at."""

import itertools
import random

import numpy as np
import pytest
import torch
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import TrainingSampler

from ssdet.data.resumable import (
    ResumableTrainLoader,
    ZipLoader,
    _PositionDataset,
    build_resumable_train_loader,
    seeded_rng,
    start_loader_at,
)


def records(n: int = 23, sizes: bool = True) -> list[dict]:
    # Landscape and portrait images in an irregular pattern, so the buckets fill unevenly.
    out = []
    for i in range(n):
        record = {"index": i}
        if sizes:
            record.update(width=64 if i % 3 else 32, height=48)
        elif i % 2:
            record.update(width=0, height=0)
        out.append(record)
    return out


def augment(record: dict) -> dict:
    """A mapper with the augmentations' RNG in it: each call draws from np.random and random."""
    size = {"width": 64 if record["index"] % 3 else 32, "height": 48}
    return {**record, **size, "np": float(np.random.uniform()), "py": random.random()}


def take(loader, n: int) -> list:
    return list(itertools.islice(iter(loader), n))


def test_index_stream_is_training_samplers_sharded_by_rank():
    sampler = TrainingSampler(23, seed=5)
    expected = list(itertools.islice(sampler._infinite_indices(), 200))
    for rank in range(2):
        stream = _PositionDataset(records(), augment, seed=5, rank=rank, world_size=2)
        assert [stream.index(p) for p in range(100)] == expected[rank::2]
    # Back to an earlier epoch: the stream restarts its generator.
    assert stream.index(0) == expected[1]


def test_batches_are_detectron2s_aspect_ratio_groups():
    loader = ResumableTrainLoader(records(), lambda r: dict(r), batch_size=4, seed=3)
    sampler = TrainingSampler(23, seed=3)
    stream = (records()[i] for i in sampler._infinite_indices())
    expected = take(AspectRatioGroupedDataset(stream, 4), 15)
    assert [[d["index"] for d in b] for b in take(loader, 15)] == [
        [d["index"] for d in b] for b in expected
    ]


@pytest.mark.parametrize("grouping", [True, False])
def test_start_at_continues_the_uninterrupted_stream(grouping):
    def loader(workers: int = 0, sizes: bool = True) -> ResumableTrainLoader:
        return ResumableTrainLoader(
            records(sizes=sizes),
            augment,
            batch_size=4,
            seed=7,
            aspect_ratio_grouping=grouping,
            num_workers=workers,
        )

    full = take(loader(), 14)
    assert len({b[0]["np"] for b in full}) == 14, "the augmentations' RNG is not drawn"
    # The mapped images depend on neither the workers nor the RNG state of the caller.
    np.random.seed(123)
    assert take(loader(workers=2), 14) == full
    for start in (1, 5, 9):
        resumed = loader()
        assert start_loader_at(resumed, start)
        assert take(resumed, 14 - start) == full[start:]
    # Without sizes in the dataset dicts (absent or 0), the buckets come from the mapped dicts.
    resumed = loader(sizes=False)
    resumed.start_at(6)
    assert [[d["index"] for d in b] for b in take(resumed, 8)] == [
        [d["index"] for d in b] for b in full[6:]
    ]


def test_collate_and_checks():
    loader = build_resumable_train_loader(
        records(),
        mapper=augment,
        total_batch_size=3,
        seed=1,
        aspect_ratio_grouping=False,
        collate_fn=lambda batch: [d["index"] for d in batch],
    )
    first = take(loader, 3)
    assert all(len(b) == 3 for b in first)
    assert first == take(loader, 3), "a second iteration does not start over"
    with pytest.raises(ValueError, match="IMS_PER_BATCH 0 must be a positive multiple"):
        build_resumable_train_loader(records(), mapper=augment, total_batch_size=0, seed=1)
    assert not start_loader_at([[1, 2]], 3), "a plain iterable cannot start at a batch"


def test_seeded_rng_restores_the_callers_state():
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    expected = np.random.uniform(), random.random(), torch.rand(1).item()
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    with seeded_rng(4, 2):
        inside = np.random.uniform(), random.random(), torch.rand(1).item()
    assert (np.random.uniform(), random.random(), torch.rand(1).item()) == expected
    with seeded_rng(4, 2):
        assert (np.random.uniform(), random.random(), torch.rand(1).item()) == inside


def test_zip_loader_steps_its_parts_together_and_resumes_only_if_all_can():
    first = ResumableTrainLoader(records(), augment, batch_size=2, seed=3)
    second = ResumableTrainLoader(records(7), augment, batch_size=1, seed=4)
    zipped = ZipLoader([first, second], lambda a, b: (a, b))
    steps = take(zipped, 5)
    expected = list(zip(take(first, 5), take(second, 5), strict=True))
    assert [[r["index"] for r in a] for a, _ in steps] == [
        [r["index"] for r in a] for a, _ in expected
    ]
    assert [b[0]["index"] for _, b in steps] == [b[0]["index"] for _, b in expected]
    # Resuming tells every part; the zip resumes at step 3 exactly when its parts do.
    assert zipped.start_at(3) and first.start_batch == 3 and second.start_batch == 3
    assert [b[0]["index"] for _, b in take(zipped, 2)] == [b[0]["index"] for _, b in expected[3:]]
    plain = ZipLoader([first, [["a"], ["b"]]], lambda a, b: b)
    assert not plain.start_at(1) and first.start_batch == 1
    # It ends with its shortest part.
    assert list(ZipLoader([iter([1, 2, 3]), iter("ab")], lambda a, b: f"{a}{b}")) == ["1a", "2b"]
