"""The student's training batches: human-labeled and pseudo-labeled images in a fixed ratio.

"Rethinking Pre-training and Self-training" trains the student on batches that are half COCO
(human labels), half pseudo-labeled ImageNet. Every batch of every process holds exactly
``round(B * PSEUDO_RATIO)`` pseudo-labeled images and the rest human-labeled, B being the
per-process batch size. Each part is a train loader as Detectron2's
``build_detection_train_loader`` builds it, made resumable (:mod:`ssdet.data.resumable`), with its
own dataset, mapper (augmentation policy), infinite
:class:`~detectron2.data.samplers.TrainingSampler` stream (sharded by rank, with its own seed) and
aspect ratio grouping; :class:`MixedBatchLoader` zips them into :class:`MixedBatch` pairs, so the
two parts never have to be told apart by a key inside the dicts.
"""

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from detectron2.config import CfgNode, configurable
from detectron2.utils import comm

from ssdet.data.augment import PolicyDatasetMapper
from ssdet.data.build import get_labeled_dataset_dicts
from ssdet.data.pseudo_labels import load_pseudo_label_dataset
from ssdet.data.resumable import ZipLoader, build_resumable_train_loader
from ssdet.structures import MixedBatch
from ssdet.utils.errors import InputError

__all__ = [
    "MixedBatch",
    "MixedBatchLoader",
    "build_mixed_train_loader",
    "pseudo_augment_cfg",
    "split_batch_size",
]

logger = logging.getLogger(__name__)


def split_batch_size(
    total_batch_size: int, pseudo_ratio: float, world_size: int | None = None
) -> tuple[int, int]:
    """Split each process's batch into human-labeled and pseudo-labeled images.

    Args:
        total_batch_size: images per step over all processes (``SOLVER.IMS_PER_BATCH``).
        pseudo_ratio: fraction in [0, 1] of the images that are pseudo-labeled.
        world_size: number of processes; None = Detectron2's current world size.

    Returns:
        ``(num_human, num_pseudo)`` images per process; ``num_pseudo = round(B * pseudo_ratio)``
        (Python's rounding, halves to even) for ``B = total_batch_size / world_size``.

    Raises:
        InputError: the batch does not divide over the processes, the ratio is outside [0, 1], or
            a ratio strictly between 0 and 1 leaves one part without images.
    """
    world_size = comm.get_world_size() if world_size is None else world_size
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise InputError(
            f"SOLVER.IMS_PER_BATCH {total_batch_size} must be a positive multiple of the number "
            f"of processes ({world_size})."
        )
    if not 0.0 <= pseudo_ratio <= 1.0:
        raise InputError(f"SSDET.SELF_TRAINING.PSEUDO_RATIO must be in [0, 1], got {pseudo_ratio}")
    per_process = total_batch_size // world_size
    num_pseudo = round(per_process * pseudo_ratio)
    num_human = per_process - num_pseudo
    if 0.0 < pseudo_ratio < 1.0 and (num_human == 0 or num_pseudo == 0):
        raise InputError(
            f"SSDET.SELF_TRAINING.PSEUDO_RATIO {pseudo_ratio} of {per_process} images per process "
            f"(SOLVER.IMS_PER_BATCH {total_batch_size} over {world_size} processes) gives "
            f"{num_human} human-labeled and {num_pseudo} pseudo-labeled images: each part needs at "
            "least one. Raise SOLVER.IMS_PER_BATCH, or set PSEUDO_RATIO to 0 or 1 to train on one "
            "part only."
        )
    return num_human, num_pseudo


class MixedBatchLoader(ZipLoader):
    """Zips a human-labeled and a pseudo-labeled batch loader into :class:`MixedBatch` pairs.

    Args:
        human_loader: infinite iterable of lists of mapped dicts (a Detectron2 train loader), or
            None for no human-labeled images.
        pseudo_loader: the same for the pseudo-labeled images, or None.
        num_human: images per batch of ``human_loader`` (0 when it is None).
        num_pseudo: images per batch of ``pseudo_loader`` (0 when it is None).
    """

    def __init__(
        self,
        human_loader: Iterable[list[dict]] | None,
        pseudo_loader: Iterable[list[dict]] | None,
        num_human: int,
        num_pseudo: int,
    ):
        if (human_loader is None) != (num_human == 0) or (pseudo_loader is None) != (
            num_pseudo == 0
        ):
            raise ValueError("a part has a loader exactly when it has images per batch")
        if human_loader is None and pseudo_loader is None:
            raise ValueError("MixedBatchLoader needs at least one loader")
        self.human_loader = human_loader
        self.pseudo_loader = pseudo_loader
        self.num_human = num_human
        self.num_pseudo = num_pseudo
        # A part without images is an empty list at every step.
        present = [p for p in (human_loader, pseudo_loader) if p is not None]
        if human_loader is None:
            super().__init__(present, lambda pseudo: MixedBatch([], pseudo))
        elif pseudo_loader is None:
            super().__init__(present, lambda human: MixedBatch(human, []))
        else:
            super().__init__(present, MixedBatch)


def pseudo_augment_cfg(cfg: CfgNode) -> CfgNode:
    """The config of the pseudo-labeled part's mapper: ``SSDET.AUGMENT.POLICY`` is
    ``SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY`` when that is set."""
    pseudo_cfg = cfg.clone()
    pseudo_cfg.defrost()
    pseudo_cfg.SSDET.AUGMENT.POLICY = (
        cfg.SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY or cfg.SSDET.AUGMENT.POLICY
    )
    return pseudo_cfg


def _pseudo_mapper(cfg: CfgNode) -> PolicyDatasetMapper:
    # Score-weighted targets need the teacher's scores in the model's input.
    keep_scores = cfg.SSDET.SELF_TRAINING.PSEUDO_CLS_TARGET == "score"
    return PolicyDatasetMapper(pseudo_augment_cfg(cfg), is_train=True, keep_scores=keep_scores)


def _mixed_train_loader_from_config(
    cfg: CfgNode,
    *,
    human_dataset: Sequence[dict] | None = None,
    pseudo_dataset: Sequence[dict] | None = None,
) -> dict:
    ratio = cfg.SSDET.SELF_TRAINING.PSEUDO_RATIO
    has_pseudo = ratio > 0
    has_human = ratio < 1
    if has_human and human_dataset is None:
        human_dataset = get_labeled_dataset_dicts(cfg)
    if has_pseudo and pseudo_dataset is None:
        pseudo_dataset = load_pseudo_label_dataset(cfg)
    seed = cfg.SSDET.SELF_TRAINING.SAMPLER_SEED
    return {
        "human_dataset": human_dataset if has_human else None,
        "pseudo_dataset": pseudo_dataset if has_pseudo else None,
        "human_mapper": PolicyDatasetMapper(cfg, is_train=True) if has_human else None,
        "pseudo_mapper": _pseudo_mapper(cfg) if has_pseudo else None,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "pseudo_ratio": ratio,
        "seed": seed if seed >= 0 else None,
        "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
    }


def _split_workers(num_workers: int, num_human: int, num_pseudo: int) -> tuple[int, int]:
    """DataLoader workers of each part, in proportion to its images, at least one per used part.

    Both parts load in parallel in every step, so a part left without workers would load in the
    main process and stall the step.
    """
    if num_workers == 0:
        return 0, 0
    total = num_human + num_pseudo
    human = max(1, round(num_workers * num_human / total)) if num_human else 0
    pseudo = max(1, num_workers - human) if num_pseudo else 0
    return human, pseudo


def _warn_if_pseudo_part_small(
    human_dataset: Sequence[dict] | None,
    pseudo_dataset: Sequence[dict] | None,
    num_human: int,
    num_pseudo: int,
) -> bool:
    """Warn when each pseudo-labeled image would be drawn more often than each human-labeled one.

    The paper's unlabeled set is ~10x its labeled one, so the student sees every pseudo image
    far less often than every human one. A teacher that keeps boxes on only a few images (seen
    on the mini world: 96 images at Augment-S4) turns the pseudo half of every batch into those
    few images over and over, which the student overfits, with no error anywhere. The
    "almost empty" warning of the filter does not fire there (96 of 3332 images is above 1%).

    Returns:
        Whether it warned.
    """
    if not (num_human and num_pseudo and human_dataset and pseudo_dataset):
        return False
    human_rate = num_human / len(human_dataset)
    pseudo_rate = num_pseudo / len(pseudo_dataset)
    if pseudo_rate <= human_rate:
        return False
    logger.warning(
        "Only %d pseudo-labeled images against %d human-labeled ones: with %d + %d per step, the "
        "student draws each pseudo image %.1fx as often as each human one and may overfit them. "
        "Lower SSDET.PSEUDO_LABELS.SCORE_THRESH, set KEEP_EMPTY_IMAGES True, or check the "
        "teacher (report.json next to the pseudo-label store).",
        len(pseudo_dataset),
        len(human_dataset),
        num_human,
        num_pseudo,
        pseudo_rate / human_rate,
    )
    return True


@configurable(from_config=_mixed_train_loader_from_config)
def build_mixed_train_loader(
    human_dataset: Sequence[dict] | None,
    pseudo_dataset: Sequence[dict] | None,
    *,
    human_mapper: Callable[[dict], dict] | None,
    pseudo_mapper: Callable[[dict], dict] | None,
    total_batch_size: int,
    pseudo_ratio: float = 0.5,
    seed: int | None = None,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
) -> MixedBatchLoader:
    """Build the student's train loader: each process's batches mix the two parts in a fixed ratio.

    Built from a config (``build_mixed_train_loader(cfg)``), the human-labeled part is
    ``get_labeled_dataset_dicts(cfg)`` mapped with ``SSDET.AUGMENT``'s policy, the pseudo-labeled
    part is :func:`load_pseudo_label_dataset` mapped with ``SSDET.SELF_TRAINING.
    PSEUDO_AUGMENT_POLICY`` (default: the same policy). ``human_dataset`` / ``pseudo_dataset``
    keyword arguments replace the datasets read from the config.

    Args:
        human_dataset: dataset dicts of the human-labeled images (list or map-style dataset);
            None when ``pseudo_ratio`` is 1.
        pseudo_dataset: dataset dicts of the pseudo-labeled images; None when ``pseudo_ratio``
            is 0.
        human_mapper: maps a human-labeled dict to the model's input (e.g. PolicyDatasetMapper).
        pseudo_mapper: the same for the pseudo-labeled images (may differ, e.g. a stronger
            augmentation as student noise).
        total_batch_size: images per step over all processes.
        pseudo_ratio: fraction of each process's batch that is pseudo-labeled
            (:func:`split_batch_size`).
        seed: seed of the samplers' shuffles; the two parts use two different seeds derived from
            it. None = a random seed shared by all processes, as Detectron2's default.
        aspect_ratio_grouping: group each part's images by aspect ratio (Detectron2's option).
        num_workers: DataLoader workers, split between the parts (:func:`_split_workers`).

    Returns:
        An infinite iterable of :class:`MixedBatch`, ``num_human`` + ``num_pseudo`` images each.
    """
    num_human, num_pseudo = split_batch_size(total_batch_size, pseudo_ratio)
    if seed is None:
        seed = comm.shared_random_seed()
    # Two independent seeds: parts of equal size must not be shuffled in the same order.
    human_seed, pseudo_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    human_workers, pseudo_workers = _split_workers(num_workers, num_human, num_pseudo)
    world_size = comm.get_world_size()

    def part_loader(dataset, mapper, num_images: int, part_seed: int, workers: int, part: str):
        if dataset is None or len(dataset) == 0:
            raise ValueError(
                f"the {part}-labeled part has {num_images} images per batch but no data"
            )
        # TrainingSampler's stream, sharded by rank, resumable (ssdet.data.resumable).
        return build_resumable_train_loader(
            dataset,
            mapper=mapper,
            seed=part_seed,
            # Divided by the number of processes, as Detectron2 does.
            total_batch_size=num_images * world_size,
            aspect_ratio_grouping=aspect_ratio_grouping,
            num_workers=workers,
        )

    human_loader = pseudo_loader = None
    if num_human:
        human_loader = part_loader(
            human_dataset, human_mapper, num_human, human_seed, human_workers, "human"
        )
    if num_pseudo:
        pseudo_loader = part_loader(
            pseudo_dataset, pseudo_mapper, num_pseudo, pseudo_seed, pseudo_workers, "pseudo"
        )
    _warn_if_pseudo_part_small(human_dataset, pseudo_dataset, num_human, num_pseudo)
    logger.info(
        "Mixed batches: %s human-labeled + %s pseudo-labeled images per process and step; sampler "
        "seeds %s / %s",
        num_human,
        num_pseudo,
        human_seed,
        pseudo_seed,
    )
    return MixedBatchLoader(human_loader, pseudo_loader, num_human, num_pseudo)
