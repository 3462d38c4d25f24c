"""The supervised trainer: Detectron2's ``DefaultTrainer`` with ssdet's data and evaluation."""

import logging
import os

import detectron2.engine.defaults as d2_defaults
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import log_first_n
from fvcore.nn import sigmoid_focal_loss_jit

from ssdet.checkpoint import FINAL_CHECKPOINT, SsdetCheckpointerMixin, write_stock_config
from ssdet.checkpoint.backbone_init import apply_backbone_init, check_init_config
from ssdet.data import check_num_classes, check_registered, get_labeled_dataset_dicts
from ssdet.data.augment import PolicyDatasetMapper
from ssdet.data.joint import add_classification_batches, is_joint_training
from ssdet.data.resumable import build_resumable_train_loader
from ssdet.engine.accumulation import (
    AMPGradientAccumulationTrainer,
    CPUAutocastGradientAccumulationTrainer,
    GradientAccumulationTrainer,
    check_accumulation_steps,
)
from ssdet.engine.exact_resume import (
    RANK_STATE_KEY,
    add_exact_resume_hooks,
    load_rank_state,
    start_train_loader,
)
from ssdet.engine.interrupt import add_stop_on_signal
from ssdet.engine.joint import DETECTOR_CHECKPOINT, JointTrainerMixin, detector_config
from ssdet.evaluation import FastCOCOEvaluator
from ssdet.solver import build_optimizer

_d2_create_ddp_model = d2_defaults.create_ddp_model


def create_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``, also for CPU processes (``launch`` on gloo).

    Detectron2 passes ``device_ids=[local rank]``, which ``DistributedDataParallel`` accepts for
    GPU modules only. On a CPU machine several 1-thread processes train faster than one process
    with as many threads (the mini model does not keep several threads busy), so CPU modules get
    ``device_ids=None``.
    """
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


# DefaultTrainer.__init__ calls the module's function by name; this is its one CPU-aware change.
d2_defaults.create_ddp_model = create_ddp_model


def warm_up_torchscript() -> None:
    """Run fvcore's scripted focal loss until TorchScript's executor has specialized it.

    The executor profiles a scripted function's first calls and then runs a specialized graph,
    whose gradients differ from the first calls' in the last bits. A process that trains from
    its first step would otherwise not compute as one that resumes mid-run
    (ssdet.engine.exact_resume); warmed up, every training step runs the specialized graph.
    """
    for size in (7, 13, 29):
        logits = torch.linspace(-4.0, 4.0, size * 3).reshape(size, 3).requires_grad_()
        targets = (torch.arange(size * 3).reshape(size, 3) % 5 == 0).float()
        for reduction in ("none", "sum"):
            loss = sigmoid_focal_loss_jit(logits, targets, 0.25, 2.0, reduction)
            loss.sum().backward()


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16; AMX CPUs have it too).

    Without it PyTorch emulates bfloat16 through float32 conversions: measured on an AVX2-only
    AMD EPYC, the mini teacher's step took 4.0 s in bfloat16 autocast against 0.57 s in float32
    (docs/results/mini_regime_2026-12-02/queue_session11.sh). A PyTorch without the probe counts
    as native, so nothing changes there.
    """
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return probe is None or bool(probe())


def amp_mode(cfg: CfgNode) -> str | None:
    """How a training step runs under ``SOLVER.AMP.ENABLED``: ``None`` (float32), ``"cpu"`` or
    ``"cuda"``.

    Detectron2's ``AMPTrainer`` is CUDA-only (float16 with a grad scaler). On a CPU device ssdet
    runs the forward in bfloat16 instead (``"cpu"``): it keeps float32's exponent range, so no
    loss scaling is needed, and CPUs with AVX512-BF16 run the mini model's convolutions ~1.26x
    faster. A CPU without native bfloat16 runs float32, with a warning: there bfloat16 would be
    ~7x slower (:func:`cpu_has_native_bfloat16`), never what AMP is asked for.
    """
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    if torch.device(cfg.MODEL.DEVICE).type != "cpu":
        return "cuda"
    if cpu_has_native_bfloat16():
        return "cpu"
    log_first_n(
        logging.WARNING,
        "SOLVER.AMP.ENABLED: this CPU has no native bfloat16 (AVX512-BF16), where bfloat16 "
        "autocast runs ~7x slower than float32; training in float32 instead.",
        key="message",
    )
    return None


def uses_cpu_autocast(cfg: CfgNode) -> bool:
    """Whether the step runs in bfloat16 autocast on the CPU (:func:`amp_mode` is ``"cpu"``)."""
    return amp_mode(cfg) == "cpu"


class CPUAutocastTrainer(SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` with its step under ``torch.autocast("cpu", bfloat16)``.

    Autocast casts only the ops on its bfloat16 list (convolutions, matmuls); the parameters,
    their gradients and the optimizer's update stay float32, as with CUDA AMP.
    """

    def run_step(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            super().run_step()


def cpu_amp_step(cfg: CfgNode, trainer: SimpleTrainer) -> SimpleTrainer:
    """The step a ``DefaultTrainer`` should run on a CPU device under ``SOLVER.AMP.ENABLED``.

    ``DefaultTrainer`` picks Detectron2's ``AMPTrainer`` for AMP, which refuses to run without
    CUDA: on a CPU the step becomes :class:`CPUAutocastTrainer` (or ``SimpleTrainer``, float32,
    where :func:`amp_mode` says so) over the same model, loader and optimizer.

    Args:
        cfg: the run's config.
        trainer: the step ``DefaultTrainer`` built (its ``_trainer``).

    Returns:
        ``trainer`` itself without AMP or on a GPU, else the CPU step.
    """
    mode = amp_mode(cfg)
    if not cfg.SOLVER.AMP.ENABLED or mode == "cuda":
        return trainer
    step_class = CPUAutocastTrainer if mode == "cpu" else SimpleTrainer
    return step_class(trainer.model, trainer.data_loader, trainer.optimizer)


class Trainer(JointTrainerMixin, SsdetCheckpointerMixin, DefaultTrainer):
    """``DefaultTrainer`` with ssdet's labeled subsets, Augment-S1..S4 policies and COCO AP.

    With ``MODEL.META_ARCHITECTURE "JointRetinaNet"`` it trains detection and classification jointly
    (:class:`~ssdet.engine.joint.JointTrainerMixin`).

    With ``SOLVER.AMP.ENABLED`` on a CPU device, the step runs in bfloat16 autocast
    (:class:`CPUAutocastTrainer`; float32 on a CPU without native bfloat16, see :func:`amp_mode`);
    on a GPU it is Detectron2's ``AMPTrainer``. With
    ``SSDET.SOLVER.GRAD_ACCUM_STEPS`` > 1 each step accumulates that many batches
    (:mod:`ssdet.engine.accumulation`).

    Checkpointing, the LR schedule, periodic evaluation, logging and ``launch`` are Detectron2's;
    checkpoints are read and written by :class:`~ssdet.checkpoint.SsdetCheckpointer` (no code runs
    from a checkpoint file, atomic writes). SIGINT and SIGTERM stop training after the current
    step, with a checkpoint of it (:mod:`ssdet.engine.interrupt`).
    """

    def __init__(self, cfg: CfgNode):
        accumulation_steps = check_accumulation_steps(cfg.SSDET.SOLVER.GRAD_ACCUM_STEPS)
        warm_up_torchscript()
        super().__init__(cfg)
        inner = self._trainer
        if accumulation_steps > 1:
            # Several batches per optimizer step (ssdet.engine.accumulation), in the precision
            # that the step below would have.
            step_class = {
                None: GradientAccumulationTrainer,
                "cpu": CPUAutocastGradientAccumulationTrainer,
                "cuda": AMPGradientAccumulationTrainer,
            }[amp_mode(cfg)]
            self._trainer = step_class(
                inner.model,
                inner.data_loader,
                inner.optimizer,
                accumulation_steps=accumulation_steps,
            )
        else:
            self._trainer = cpu_amp_step(cfg, inner)

    def build_hooks(self) -> list:
        # Ctrl-C and SIGTERM stop after the current step, with its checkpoint; each step's RNG
        # and every process's state make a resume exact (ssdet.engine.exact_resume).
        return add_exact_resume_hooks(add_stop_on_signal(super().build_hooks()), self.cfg)

    def state_dict(self) -> dict:
        ret = super().state_dict()
        # Gathered by CollectRankState (or StopOnSignal) just before the checkpoint is written.
        ret[RANK_STATE_KEY] = getattr(self, "ssdet_rank_states", None)
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(load_rank_state(self, state_dict))

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        """Refuse a config that this trainer would refuse once built, without building it.

        What is cheap to build is built (the augmentation policy); no model, data or checkpoint
        is read. The self-training experiment checks every stage with it before any stage runs.

        Raises:
            InputError (or ValueError): the first bad setting.
        """
        check_accumulation_steps(cfg.SSDET.SOLVER.GRAD_ACCUM_STEPS)
        check_init_config(cfg)
        PolicyDatasetMapper.from_config(cfg, is_train=True)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        mapper = PolicyDatasetMapper(cfg, is_train=True)
        dataset = get_labeled_dataset_dicts(cfg)
        if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            # Detectron2's loader for this sampler, made resumable (ssdet.data.resumable). Its
            # seed is SEED itself, not a draw from the RNG that SEED seeded (as TrainingSampler's
            # is): the stream then does not depend on what ran before the loader was built.
            loader = build_resumable_train_loader(
                dataset,
                mapper=mapper,
                total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
                seed=cfg.SEED if cfg.SEED >= 0 else None,
                aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
                num_workers=cfg.DATALOADER.NUM_WORKERS,
            )
        else:
            loader = build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
        return add_classification_batches(loader, cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        check_registered([dataset_name])
        loader = build_detection_test_loader(cfg, dataset_name)
        check_num_classes(cfg, dataset_name)
        return loader

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return FastCOCOEvaluator(dataset_name, output_dir=output_folder)

    def train(self) -> dict | None:
        """Train, then return the final evaluation (``{dataset: {"bbox": metrics}}``).

        ``DefaultTrainer.train`` returns it only when ``TEST.EXPECTED_RESULTS`` is set; its
        ``EvalHook`` evaluates after the last iteration either way and keeps the result. The
        final weights get ``config_detectron2.yaml`` beside them, which loads them in stock
        Detectron2 (:mod:`ssdet.checkpoint.stock_config`).
        """
        super().train()
        # A joint model's final checkpoint keeps its classification head, for resuming; the
        # detector alone is the model a Detectron2 config builds.
        name = DETECTOR_CHECKPOINT if is_joint_training(self.cfg) else FINAL_CHECKPOINT
        weights = os.path.join(self.cfg.OUTPUT_DIR, name)
        if comm.is_main_process() and os.path.isfile(weights):
            write_stock_config(detector_config(self.cfg), weights)
        return getattr(self, "_last_eval_results", None)

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's ``resume_or_load``; a run that starts fresh first gets its backbone init.

        ``SSDET.INIT`` is applied (and recorded in ``OUTPUT_DIR/init.json``) unless the run
        resumes from a checkpoint in ``OUTPUT_DIR``; see :mod:`ssdet.checkpoint.backbone_init`. A
        resumed run's loader starts at the batch of its first iteration
        (ssdet.engine.exact_resume).
        """
        if not (resume and self.checkpointer.has_checkpoint()):
            apply_backbone_init(self.checkpointer.model, self.cfg)
        super().resume_or_load(resume=resume)
        # Each iteration reads GRAD_ACCUM_STEPS batches.
        start_train_loader(self, self.cfg.SSDET.SOLVER.GRAD_ACCUM_STEPS)
