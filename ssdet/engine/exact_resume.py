"""Exact resume, the engine's side: each step's RNG and every process's state in the checkpoint.

With ssdet's train loaders (:mod:`ssdet.data.resumable`: batch n depends on (seed, rank, n)
alone), three things still made a run resumed at iteration k differ from the uninterrupted run:

- The RNG of the step (the student's drop path and dropout, anything the model draws).
  :class:`SeedEachStep` seeds ``torch``, ``numpy`` and ``random`` before every step from
  (``SEED``, iteration, rank).
- State that each process keeps for itself, which Detectron2 checkpoints from the main process
  only: the moving foreground-count normalizer of RetinaNet and FCOS (``loss_normalizer``), the
  student's loss normalizers and pseudo-loss weighting. :class:`CollectRankState` gathers every
  process's copy just before a checkpoint is written, and :func:`load_rank_state` gives each
  process its own back.
- The loader's place: :func:`start_train_loader` starts it at the iteration resumed from.
- TorchScript: its executor profiles a scripted function's first calls (fvcore's
  ``sigmoid_focal_loss_jit``, which RetinaNet uses) and then runs a specialized graph whose
  gradients differ from the first calls' in the last bits. A resumed process's first steps then
  differed from the uninterrupted run's at ~4e-9 and the runs drifted apart; so did a student
  trained in the process that had trained its teacher. Every trainer warms the focal loss up
  when it is built (:func:`ssdet.engine.trainer.warm_up_torchscript`), so every step of every
  process runs the specialized graph.

What is guaranteed: with ``SEED`` >= 0 and the same number of processes and threads, a run
stopped at any point (SIGKILL included) and resumed with ``--resume`` from its last checkpoint
ends with the same weights, byte for byte, as the run that was never stopped; so do the
checkpoints and metrics that follow. This holds for the detector's, the student's and the joint
trainer's loaders with ``DATALOADER.SAMPLER_TRAIN TrainingSampler``. It does not hold, and a
resume says so in the log, with ``SEED`` < 0 (Detectron2 then draws new seeds in every process),
with another sampler, after a change of the number of processes, or for pre-training's loader.
"""

from __future__ import annotations

import json
import logging
import numbers
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ssdet.data.resumable import start_loader_at
from ssdet.utils.ddp import unwrap_model

__all__ = [
    "RANK_STATE_KEY",
    "CollectRankState",
    "SeedEachStep",
    "add_exact_resume_hooks",
    "collect_rank_state",
    "load_rank_state",
    "start_train_loader",
]

logger = logging.getLogger(__name__)

# The trainer's checkpoint entry with one state per process, in rank order.
RANK_STATE_KEY = "ssdet_rank_states"
# The inner trainer's state that DDP keeps equal on every process: saved once, by Detectron2.
_SHARED_TRAINER_STATE = ("optimizer", "grad_scaler", "iteration", "hooks")
# Detectron2's DenseDetector._ema_update keeps its moving averages as plain attributes.
_MODEL_STATE_PREFIX = "loss_normalizer"


class SeedEachStep(HookBase):
    """Seeds every RNG before each step from (seed, iteration, rank): the step's draws then do
    not depend on what ran before it (an evaluation, or the process that resumed)."""

    def __init__(self, seed: int):
        self.seed = seed

    def before_step(self) -> None:
        words = [self.seed, self.trainer.iter, comm.get_rank()]
        seed_all_rng(int(np.random.SeedSequence(words).generate_state(1)[0] >> 1))


def _local_rank_state(trainer: Any) -> dict[str, Any]:
    model = unwrap_model(trainer.model)
    model_state = {
        name: value
        for name, value in vars(model).items()
        if name.startswith(_MODEL_STATE_PREFIX) and isinstance(value, numbers.Number)
    }
    inner = {
        key: value
        for key, value in trainer._trainer.state_dict().items()
        if key not in _SHARED_TRAINER_STATE
    }
    return {"model": model_state, "trainer": inner}


def collect_rank_state(trainer: Any) -> None:
    """Gather every process's own state into ``trainer`` (call it on every process at once)."""
    local = _local_rank_state(trainer)
    states = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
    # JSON (plain numbers, exact for floats): the same states are then the same bytes in every
    # checkpoint, which downstream stages fingerprint, whichever objects held them.
    trainer.ssdet_rank_states = json.dumps(states, sort_keys=True)


def load_rank_state(trainer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` (a checkpoint's trainer state) with this process's own state in it.

    Sets the model's per-process attributes; returns the state for ``DefaultTrainer``'s
    ``load_state_dict``, its ``_trainer`` entry completed with this process's values.
    """
    encoded = state_dict.get(RANK_STATE_KEY)
    # Kept as loaded: a checkpoint written again before the next step (a restored
    # model_final.pth) holds the same states, byte for byte.
    trainer.ssdet_rank_states = encoded
    states = json.loads(encoded) if encoded else None
    if not states:
        logger.warning(
            "The checkpoint holds no per-process state (an older ssdet wrote it): the resumed "
            "run continues, but not exactly as the uninterrupted one would."
        )
        return state_dict
    if len(states) != comm.get_world_size():
        logger.warning(
            "The checkpoint was written by %s processes and %s resume it: each starts from the "
            "first process's state, and the run is not exact.",
            len(states),
            comm.get_world_size(),
        )
        mine = states[0]
    else:
        mine = states[comm.get_rank()]
    model = unwrap_model(trainer.model)
    for name, value in mine["model"].items():
        setattr(model, name, value)
    return {**state_dict, "_trainer": {**state_dict["_trainer"], **mine["trainer"]}}


class CollectRankState(HookBase):
    """Before each checkpoint of ``PeriodicCheckpointer``, gather every process's own state
    (:func:`collect_rank_state`). Every process runs it: place it before that hook, which only
    the main process has."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self) -> None:
        it, max_iter = self.trainer.iter, self.trainer.max_iter
        # fvcore's PeriodicCheckpointer.step saves at these iterations.
        if (it + 1) % self.period == 0 or it >= max_iter - 1:
            collect_rank_state(self.trainer)


def add_exact_resume_hooks(hook_list: list[HookBase | None], cfg: CfgNode) -> list:
    """A ``DefaultTrainer``'s hooks with :class:`SeedEachStep` first (when ``SEED`` >= 0) and
    :class:`CollectRankState` just after the ``LRScheduler`` hook, which every process has and
    which comes before the main process's ``PeriodicCheckpointer``."""
    index = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.LRScheduler)) + 1
    collect = CollectRankState(cfg.SOLVER.CHECKPOINT_PERIOD)
    seed = [SeedEachStep(cfg.SEED)] if cfg.SEED >= 0 else []
    return [*seed, *hook_list[:index], collect, *hook_list[index:]]


def start_train_loader(trainer: Any, batches_per_step: int) -> None:
    """After a resume, start the trainer's loader at the batch of its first iteration."""
    if trainer.start_iter == 0:
        return
    exact = start_loader_at(trainer._trainer.data_loader, trainer.start_iter * batches_per_step)
    if not exact:
        logger.warning(
            "This train loader cannot start at the resumed iteration (a sampler other than "
            "TrainingSampler, or pre-training's): it starts over, and the run is not exact."
        )
    elif trainer.cfg.SEED < 0:
        logger.warning(
            "SEED is negative, so every process draws new seeds: the resumed run is not the "
            "uninterrupted one. Set SEED to a number >= 0 for an exact resume."
        )
