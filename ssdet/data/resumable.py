"""Train loaders whose batch n is a function of (seed, rank, n) alone: resumes are exact.

Detectron2's train loader starts its sampler and the augmentations' RNG afresh in every run, so
a run resumed at iteration k trains on other images, in another order and augmented otherwise,
than the uninterrupted run did after step k. :func:`build_resumable_train_loader` keeps
Detectron2's stream, the indices of :class:`~detectron2.data.samplers.TrainingSampler` (one
seeded permutation per epoch, sharded by rank the same way) grouped into batches by
:class:`~detectron2.data.common.AspectRatioGroupedDataset`'s rule, with three changes:

- each image's augmentation RNG (``np.random``, ``random``, ``torch``) is seeded from (seed, its
  position in the stream) in whichever process maps it, and the caller's RNG state is put back
  afterwards, so a mapped image depends on neither ``NUM_WORKERS`` nor what ran before it;
- the DataLoader workers take the positions round robin, so the main process receives them in
  stream order;
- :meth:`ResumableTrainLoader.start_at` makes the next iteration begin at batch n: the aspect
  ratio buckets are replayed from the dataset dicts' ``width`` and ``height`` (no image is read)
  and the images they held at batch n are mapped again.

The engine's side (the RNG of each step, the per-process state in checkpoints) is
:mod:`ssdet.engine.exact_resume`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import operator
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from ssdet.utils.errors import InputError

__all__ = [
    "ResumableTrainLoader",
    "ZipLoader",
    "aspect_group",
    "build_resumable_train_loader",
    "seeded_rng",
    "start_loader_at",
]

logger = logging.getLogger(__name__)


def aspect_group(width: int, height: int) -> int:
    """Detectron2's ``AspectRatioGroupedDataset`` bucket: 0 = landscape (w > h), 1 = otherwise."""
    return 0 if width > height else 1


@contextlib.contextmanager
def seeded_rng(*words: int) -> Iterator[None]:
    """Seed ``np.random``, ``random`` and ``torch`` from ``words`` inside the block; the caller's
    RNG states are restored when it ends."""
    states = np.random.get_state(), random.getstate(), torch.get_rng_state()
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(4)
    np.random.seed(state[:2])
    random.seed(int(state[2]))
    torch.manual_seed(int(state[3]))
    try:
        yield
    finally:
        np.random.set_state(states[0])
        random.setstate(states[1])
        torch.set_rng_state(states[2])


class _IndexStream:
    """``TrainingSampler``'s infinite index stream (shuffled), read by global position."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self._restart()

    def _restart(self) -> None:
        self._generator = torch.Generator()
        self._generator.manual_seed(self.seed)
        self._epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    def _at_epoch(self, epoch: int) -> np.ndarray:
        if epoch < self._epoch:
            self._restart()
        while self._epoch < epoch:
            # The same draws as TrainingSampler._infinite_indices: one generator, epoch after epoch.
            self._order = torch.randperm(self.size, generator=self._generator).numpy()
            self._epoch += 1
        return self._order

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return int(self._at_epoch(epoch)[offset])


class _PositionDataset(torchdata.IterableDataset):
    """A rank's stream from ``start`` on: ``(bucket, mapped dict)`` at positions start, start+1...

    Position p of rank r is TrainingSampler's global position ``p * world_size + r``.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        mapper: Callable[[dict], Any],
        seed: int,
        rank: int,
        world_size: int,
    ):
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = 0
        self._indices = _IndexStream(len(dataset), seed)

    def index(self, position: int) -> int:
        return self._indices[position * self.world_size + self.rank]

    def bucket(self, position: int) -> int:
        """The aspect-ratio bucket of ``position``, from its dataset dict's size if it has one
        (Detectron2's mapper checks that it is the image's), else from its mapped dict."""
        record = self.dataset[self.index(position)]
        if record.get("width", 0) > 0 and record.get("height", 0) > 0:
            return aspect_group(record["width"], record["height"])
        # Unknown (absent, or 0 as in a store whose labeler did not record it): the mapper
        # reads the image, deterministically, so this is the bucket the run had.
        return self.map(position)[0]

    def map(self, position: int) -> tuple[int, Any]:
        """``(bucket, mapped dict)`` of ``position``."""
        global_position = position * self.world_size + self.rank
        record = self.dataset[self._indices[global_position]]
        with seeded_rng(self.seed, global_position):
            mapped = self.mapper(record)
        # As AspectRatioGroupedDataset: the mapped dict's size (Detectron2's mapper sets it).
        size = mapped if isinstance(mapped, dict) and "width" in mapped else record
        return aspect_group(size.get("width", 0), size.get("height", 0)), mapped

    def starting_at(self, start: int) -> _PositionDataset:
        stream = copy.copy(self)
        stream.start = start
        return stream

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        worker = torchdata.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        # Round robin: the DataLoader takes one item from each worker in turn, so the main
        # process receives the positions in order.
        for position in itertools.count(self.start + worker_id, num_workers):
            yield self.map(position)


class ResumableTrainLoader:
    """One process's infinite train batches; batch n is the same whichever batch a run began at.

    Args:
        dataset: dataset dicts (list or map-style dataset). With ``aspect_ratio_grouping``,
            their ``width`` and ``height`` let a resume replay the buckets without reading
            images; a dict without them (or with 0) is mapped to learn its size.
        mapper: maps a dataset dict to the model's input (it must not return None).
        batch_size: images per batch of this process.
        seed: the stream's seed, equal on every process.
        aspect_ratio_grouping: Detectron2's grouping of landscape and other images.
        num_workers: DataLoader worker processes (the batches do not depend on it).
        collate_fn: applied to each batch (a list of mapped dicts); None = the list itself.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        mapper: Callable[[dict], Any],
        *,
        batch_size: int,
        seed: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        collate_fn: Callable[[list], Any] | None = None,
    ):
        self.stream = _PositionDataset(
            dataset, mapper, seed, comm.get_rank(), comm.get_world_size()
        )
        self.batch_size = batch_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.start_batch = 0

    def start_at(self, batch: int) -> bool:
        """Make the next iteration over the loader begin at ``batch`` (0 = the beginning)."""
        self.start_batch = int(batch)
        return True

    def _replay(self, batches: int) -> tuple[int, list[list[int]]]:
        """The position after ``batches`` batches and the positions left in each bucket then."""
        if not self.aspect_ratio_grouping:
            return batches * self.batch_size, [[]]
        buckets: list[list[int]] = [[], []]
        emitted = 0
        for position in itertools.count():
            if emitted == batches:
                return position, buckets
            bucket = buckets[self.stream.bucket(position)]
            bucket.append(position)
            if len(bucket) == self.batch_size:
                bucket.clear()
                emitted += 1
        raise AssertionError("unreachable")

    def __iter__(self) -> Iterator[Any]:
        start, pending = self._replay(self.start_batch)
        if self.start_batch:
            logger.info(
                "Train loader resumed at batch %s (stream position %s)", self.start_batch, start
            )
        buckets = [[self.stream.map(p)[1] for p in positions] for positions in pending]
        loader = torchdata.DataLoader(
            self.stream.starting_at(start),
            num_workers=self.num_workers,
            # One item per fetch, unconverted, as Detectron2's loader with aspect grouping.
            collate_fn=operator.itemgetter(0),
            # The iterator draws its workers' base seed from this generator, not from the
            # global RNG, which the training step's draws (drop path) must find untouched.
            generator=torch.Generator().manual_seed(self.stream.seed),
        )
        for group, mapped in loader:
            bucket = buckets[group if self.aspect_ratio_grouping else 0]
            bucket.append(mapped)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                # Cleared before the yield, as Detectron2 does: code after a yield may never run.
                del bucket[:]
                yield self.collate_fn(batch) if self.collate_fn else batch


def build_resumable_train_loader(
    dataset: Sequence[dict],
    *,
    mapper: Callable[[dict], Any],
    total_batch_size: int,
    seed: int | None,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    collate_fn: Callable[[list], Any] | None = None,
    keys: tuple[str, str] = ("SOLVER.IMS_PER_BATCH", "DATALOADER.NUM_WORKERS"),
) -> ResumableTrainLoader:
    """``build_detection_train_loader`` with a ``TrainingSampler``, made resumable (module doc).

    Args:
        dataset: dataset dicts; a list is serialized as Detectron2 does (``DatasetFromList``),
            so that DataLoader workers share it without copying.
        mapper: maps a dataset dict to the model's input.
        total_batch_size: images per step over all processes.
        seed: the stream's seed; None = a random seed shared by all processes (Detectron2's
            default; the run is then resumable but not reproducible).
        aspect_ratio_grouping, num_workers, collate_fn: see :class:`ResumableTrainLoader`.
        keys: the config keys of ``total_batch_size`` and ``num_workers``, for the errors.

    Raises:
        InputError: a batch size that the processes cannot share, or negative workers.
    """
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise InputError(
            f"{keys[0]} {total_batch_size} must be a positive multiple of the number of "
            f"processes ({world_size})."
        )
    if num_workers < 0:
        raise InputError(f"{keys[1]} must be >= 0, got {num_workers}")
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if seed is None:
        seed = comm.shared_random_seed()
    return ResumableTrainLoader(
        dataset,
        mapper,
        batch_size=total_batch_size // world_size,
        seed=seed,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )


class ZipLoader:
    """Several train loaders stepped together: step n combines batch n of each.

    The student's mixed batches and joint training's classification batches are such zips. Each
    is resumable when all its parts are (:func:`start_loader_at`), and it ends when a part ends.

    Args:
        parts: iterables of batches, one per part.
        combine: builds a step's batch from the parts' batches, given in ``parts``' order.
    """

    def __init__(self, parts: Sequence[Iterable[Any]], combine: Callable[..., Any]):
        self.parts = tuple(parts)
        self.combine = combine

    def start_at(self, batch: int) -> bool:
        """Begin the next iteration at ``batch`` (:func:`start_loader_at`, on every part)."""
        # A list, not a generator: every part must be told, even after one that cannot resume.
        return all([start_loader_at(part, batch) for part in self.parts])

    def __iter__(self) -> Iterator[Any]:
        for batches in zip(*self.parts, strict=False):  # infinite parts; stop at the first end
            yield self.combine(*batches)


def start_loader_at(loader: Any, batch: int) -> bool:
    """Make ``loader`` begin at ``batch`` if it can (a loader with ``start_at``); whether it can.

    Loaders that zip several (the student's mixed batches, the joint batches) pass it on to each
    and can only if all of theirs can.
    """
    start_at = getattr(loader, "start_at", None)
    return bool(start_at(batch)) if start_at is not None else False
