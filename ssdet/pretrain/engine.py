"""The pre-training run: Detectron2's ``DefaultTrainer`` over a pre-training model.

Checkpointing (``SOLVER.CHECKPOINT_PERIOD``, ``--resume``), the LR schedule (``SOLVER.*``),
periodic evaluation (``TEST.EVAL_PERIOD``), metric writers and DDP are Detectron2's; this module
supplies the model, the loaders, the evaluation of each method and the exported backbone.
"""

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm

import ssdet
from ssdet.checkpoint import SsdetCheckpointerMixin, save_backbone_checkpoint
from ssdet.engine.interrupt import add_stop_on_signal
from ssdet.engine.trainer import cpu_amp_step
from ssdet.pretrain.data import (
    PretrainSplits,
    build_pretrain_test_loader,
    build_pretrain_train_loader,
    load_pretrain_splits,
)
from ssdet.pretrain.evaluation import ClassificationEvaluator, linear_probe_top1
from ssdet.pretrain.modeling import PretrainModel, SimCLR, SupervisedClassifier
from ssdet.solver import build_optimizer
from ssdet.utils.ddp import unwrap_model
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_write_json

__all__ = [
    "BACKBONE_FILE",
    "METRICS_FILE",
    "PRETRAIN_METHODS",
    "PretrainMethod",
    "PretrainTrainer",
    "evaluate_classifier",
    "evaluate_linear_probe",
    "get_pretrain_method",
    "save_pretrained_backbone",
    "write_pretrain_metrics",
]

logger = logging.getLogger(__name__)

# The exported backbone and the run's record, in OUTPUT_DIR.
BACKBONE_FILE = "backbone_final.pth"
METRICS_FILE = "pretrain_metrics.json"


def evaluate_classifier(cfg: CfgNode, model: PretrainModel, splits: PretrainSplits) -> dict:
    """``{"top1": percent}`` of a :class:`SupervisedClassifier` on the val split (main process)."""
    loader = build_pretrain_test_loader(cfg, splits.val)
    return inference_on_dataset(model, loader, ClassificationEvaluator())


def _probe_train_images(cfg: CfgNode, splits: PretrainSplits) -> Sequence[dict]:
    per_class = cfg.SSDET.PRETRAIN.LINEAR_PROBE.TRAIN_IMAGES_PER_CLASS
    train = splits.train
    if per_class <= 0:
        return train
    # The listing is sorted by class, then file name: the first images of each class.
    labels = train.labels
    starts = np.searchsorted(labels, np.arange(len(train.class_names)))
    ends = np.searchsorted(labels, np.arange(len(train.class_names)), side="right")
    chosen = (range(s, min(e, s + per_class)) for s, e in zip(starts, ends, strict=True))
    return [train[int(i)] for indices in chosen for i in indices]


def evaluate_linear_probe(cfg: CfgNode, model: PretrainModel, splits: PretrainSplits) -> dict:
    """``{"linear_probe_top1": percent}`` of the frozen backbone's features (main process)."""
    lp = cfg.SSDET.PRETRAIN.LINEAR_PROBE
    top1 = linear_probe_top1(
        model,
        build_pretrain_test_loader(cfg, _probe_train_images(cfg, splits)),
        build_pretrain_test_loader(cfg, splits.val),
        len(splits.class_names),
        weight_decay=tuple(lp.WEIGHT_DECAYS) or lp.WEIGHT_DECAY,
        max_iter=lp.MAX_ITER,
        holdout_fraction=lp.HOLDOUT_FRACTION,
    )
    return {} if top1 is None else {"linear_probe_top1": top1}


@dataclass(frozen=True)
class PretrainMethod:
    """What differs between pre-training methods.

    Attributes:
        model_class: the model; built as ``model_class(cfg, num_classes=...)``.
        num_views: augmented views of each training image in a batch.
        color_augmentation: SimCLR's color jitter, grayscale and blur on top of crop and flip.
        evaluate: ``evaluate(cfg, model, splits)`` -> ``{metric: percent}`` on the main process.
    """

    model_class: type[PretrainModel]
    num_views: int
    color_augmentation: bool
    evaluate: Callable[[CfgNode, PretrainModel, PretrainSplits], dict]


PRETRAIN_METHODS: dict[str, PretrainMethod] = {
    "supervised": PretrainMethod(SupervisedClassifier, 1, False, evaluate_classifier),
    "simclr": PretrainMethod(SimCLR, 2, True, evaluate_linear_probe),
}


def get_pretrain_method(cfg: CfgNode) -> PretrainMethod:
    """The :class:`PretrainMethod` named by ``SSDET.PRETRAIN.METHOD``."""
    name = cfg.SSDET.PRETRAIN.METHOD
    if name not in PRETRAIN_METHODS:
        raise InputError(
            f"Unknown pre-training method {name!r}: use one of {sorted(PRETRAIN_METHODS)} "
            f"(--method or SSDET.PRETRAIN.METHOD)."
        )
    return PRETRAIN_METHODS[name]


def save_pretrained_backbone(path: str, model: PretrainModel, cfg: CfgNode) -> None:
    """Write the pre-trained ResNet in ssdet's backbone format (see ssdet/checkpoint/convert.py).

    ``extra`` records the input channel order (and, for bottleneck depths, where the stride
    sits), which ``SSDET.INIT`` checks against the detector, plus the run's provenance.
    """
    resnets = cfg.MODEL.RESNETS
    extra = {
        "input_format": cfg.INPUT.FORMAT,
        "norm": resnets.NORM,
        "pretrain_dataset": cfg.SSDET.PRETRAIN.DATASET,
        "pretrain_iterations": int(cfg.SOLVER.MAX_ITER),
        "image_size": int(cfg.SSDET.PRETRAIN.IMAGE_SIZE),
    }
    if resnets.DEPTH >= 50:
        extra["stride_in_1x1"] = bool(resnets.STRIDE_IN_1X1)
    save_backbone_checkpoint(
        path,
        model.backbone.state_dict(),
        arch={
            "depth": int(resnets.DEPTH),
            "stem_out_channels": int(resnets.STEM_OUT_CHANNELS),
            "res2_out_channels": int(resnets.RES2_OUT_CHANNELS),
        },
        method=cfg.SSDET.PRETRAIN.METHOD,
        extra=extra,
    )


class PretrainTrainer(SsdetCheckpointerMixin, DefaultTrainer):
    """``DefaultTrainer`` for pre-training the detector's ResNet (``SSDET.PRETRAIN``).

    Evaluation (every ``TEST.EVAL_PERIOD`` iterations and at the end) is the method's: the
    classifier's top-1, or SimCLR's linear probe. When training ends, the main process writes the
    ResNet to ``OUTPUT_DIR/backbone_final.pth`` (:data:`BACKBONE_FILE`).
    """

    def __init__(self, cfg: CfgNode):
        if cfg.SSDET.SOLVER.GRAD_ACCUM_STEPS != 1:
            # SimCLR's negatives are the other images of the batch: several small batches are
            # not one large batch.
            raise InputError(
                "SSDET.SOLVER.GRAD_ACCUM_STEPS is for detector training; pre-training takes one "
                "batch per step: set it to 1 (and SOLVER.IMS_PER_BATCH to the batch)."
            )
        super().__init__(cfg)
        # The mini pre-training configs inherit the detector's SOLVER.AMP.ENABLED: on a CPU that
        # is bfloat16 autocast (or float32), as for the detector, not CUDA's AMPTrainer.
        self._trainer = cpu_amp_step(cfg, self._trainer)

    def build_hooks(self) -> list:
        # Ctrl-C and SIGTERM stop after the current step, with its checkpoint.
        return add_stop_on_signal(super().build_hooks())

    @classmethod
    def build_model(cls, cfg: CfgNode) -> PretrainModel:
        splits = load_pretrain_splits(cfg)
        model = get_pretrain_method(cfg).model_class(cfg, num_classes=len(splits.class_names))
        model.to(torch.device(cfg.MODEL.DEVICE))
        logger.info("Pre-training model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """SGD or AdamW, as ``SSDET.SOLVER.OPTIMIZER`` says (ssdet's detector trainers' choice)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        method = get_pretrain_method(cfg)
        splits = load_pretrain_splits(cfg)
        return build_pretrain_train_loader(
            cfg, splits.train, method.num_views, method.color_augmentation
        )

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None) -> dict:
        """The method's evaluation on the val split, e.g. ``{"top1": 87.5}`` (main process)."""
        return get_pretrain_method(cfg).evaluate(
            cfg, unwrap_model(model), load_pretrain_splits(cfg)
        )

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from ``OUTPUT_DIR``'s last checkpoint if asked; otherwise start from scratch.

        ``MODEL.WEIGHTS`` is not loaded: in a detector config it is the detector's own init.
        """
        if self.cfg.MODEL.WEIGHTS:
            logger.info("Pre-training starts from scratch: not loading %s", self.cfg.MODEL.WEIGHTS)
        self.checkpointer.resume_or_load("", resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
        self.restore_final_checkpoint()

    def train(self) -> dict:
        """Train, evaluate, export the backbone; return the final evaluation (main process)."""
        super().train()
        results = dict(getattr(self, "_last_eval_results", None) or {})
        lp = self.cfg.SSDET.PRETRAIN.LINEAR_PROBE
        if lp.RANDOM_INIT_BASELINE:
            # A fresh model of the same architecture and seed: what the probe gets for free.
            torch.manual_seed(max(self.cfg.SEED, 0))
            baseline = self.build_model(self.cfg)
            probe = evaluate_linear_probe(self.cfg, baseline, load_pretrain_splits(self.cfg))
            if probe:
                results["linear_probe_top1_random_init"] = probe["linear_probe_top1"]
        if comm.is_main_process():
            path = os.path.join(self.cfg.OUTPUT_DIR, BACKBONE_FILE)
            save_pretrained_backbone(path, unwrap_model(self.model), self.cfg)
            logger.info("Wrote the pre-trained backbone to %s", path)
        comm.synchronize()
        return results


def write_pretrain_metrics(
    cfg: CfgNode, results: dict, started: float, config_file: str
) -> dict | None:
    """Record a finished pre-training in ``OUTPUT_DIR/pretrain_metrics.json`` (main process).

    Returns:
        The record (main process), None on the other processes.
    """
    if not comm.is_main_process():
        return None
    splits = load_pretrain_splits(cfg)
    num_train = len(splits.train)
    val_counts = np.bincount(splits.val.labels, minlength=len(splits.class_names))
    record = {
        "method": cfg.SSDET.PRETRAIN.METHOD,
        "dataset": cfg.SSDET.PRETRAIN.DATASET,
        "train_root": splits.train.root,
        "val_root": splits.val.root,
        "num_classes": len(splits.class_names),
        "num_train_images": num_train,
        "num_val_images": len(splits.val),
        "iterations": cfg.SOLVER.MAX_ITER,
        "epochs": round(cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH / num_train, 2),
        **{k: round(float(v), 2) for k, v in results.items()},
        # Top-1 of always answering the val split's most frequent class, percent.
        "chance_top1": round(100.0 * val_counts.max() / val_counts.sum(), 2),
        "backbone_checkpoint": os.path.join(cfg.OUTPUT_DIR, BACKBONE_FILE),
        "config_file": config_file,
        "seed": cfg.SEED,
        # This process's wall time: a resumed run counts from its resumption.
        "wall_time_s": round(time.time() - started, 1),
        "ssdet_version": ssdet.__version__,
    }
    atomic_write_json(os.path.join(cfg.OUTPUT_DIR, METRICS_FILE), record)
    return record
