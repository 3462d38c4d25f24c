"""The student's training: a mixed-batch step with the paper's loss normalization.

Each step forwards the human-labeled and pseudo-labeled images of a
:class:`~ssdet.data.mixed.MixedBatch`, sums each part's loss dict into L_h and L_p, and minimizes
``L_h + w * L_p``. With ``SSDET.SELF_TRAINING.LOSS_NORMALIZATION "moving_average"`` (the paper's),
``w = alpha * avg(L_h) / avg(L_p)`` with exponential moving averages of both losses over steps,
which keeps the pseudo-label loss on the scale of the human-label loss however noisy the pseudo
labels are; with "none", ``w = alpha``.

Detectron2's detectors reduce their losses over the whole batch (RetinaNet divides by the batch's
foreground anchor count), so the model cannot simply be given the concatenated batch. Two ways:

* One forward (``SSDET.SELF_TRAINING.ONE_FORWARD``, the default, for a ``DenseDetector`` such as
  RetinaNet/FCOS when both parts share an aspect-ratio group): the concatenated batch goes
  through backbone and head once, as in the paper, and for the duration of that forward the
  detector's ``forward_training`` (its loss computation on the dense predictions) is replaced on
  the instance by one that calls the class's own ``forward_training`` once per part, on that
  part's rows. Nothing of Detectron2's is copied, and a second forward of the whole network,
  which cost ~10% of a step for the small mini model, is saved. BatchNorm sees the mixed batch.
* Two forwards (otherwise, or any other meta-architecture): each part through the model on its
  own; BatchNorm layers in training mode see each part as its own batch.

Either way each part's losses are exactly what the detector computes on that part alone (up to
padding to a common size): RetinaNet/FCOS divide by a moving average of the foreground count
(``loss_normalizer``, a plain attribute of Detectron2's ``DenseDetector``); the step keeps one such
average per part and swaps it in around the part's loss, so each part is normalized by its own
foreground count (pseudo-labeled ImageNet images have far fewer boxes than COCO's). They are
checkpointed with the trainer (Detectron2 itself restarts its average on resume). FrozenBN and
GroupNorm (the ImageNet-init backbones, the FPN and head of the mini configs) do not depend on the
batch. Under DDP the forward(s) feed one backward, so every parameter receives one gradient and is
reduced once (``find_unused_parameters`` stays False, as Detectron2 sets it).

The peers' loss knobs act on the pseudo part only: ``PSEUDO_LOSS_TERM_WEIGHTS`` weighs single terms
of its loss dict before they are summed into L_p (:class:`PseudoLossWeighting`), and
``PSEUDO_CLS_TARGET "score"`` weighs the classification loss of each pseudo box by its teacher
score (:mod:`ssdet.modeling.pseudo_targets`, applied around the pseudo part's loss computation in
either way above). With ``SSDET.SOLVER.GRAD_ACCUM_STEPS`` K, a step draws K mixed batches and
takes one optimizer step (:mod:`ssdet.engine.accumulation`); the loss moving averages and the
foreground-count averages then update once per batch, K times per step.

What the pseudo labels give the student is logged too: the boxes per pseudo-labeled image and
per class, as the mapped batches hold them (after augmentation, without ignore regions), counted
over the steps between two of Detectron2's metric writes.
"""

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import ImageList
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ssdet.data.augment import PolicyDatasetMapper
from ssdet.data.joint import JointBatch, add_classification_batches
from ssdet.data.mixed import MixedBatch, build_mixed_train_loader, pseudo_augment_cfg
from ssdet.data.pseudo_labels import PseudoLabelFilter, read_metadata
from ssdet.engine.accumulation import (
    AMPGradientAccumulationTrainer,
    CPUAutocastGradientAccumulationTrainer,
    GradientAccumulationTrainer,
    check_accumulation_steps,
)
from ssdet.engine.pseudo_loss import PseudoLossWeighting, StudentLoss
from ssdet.engine.trainer import Trainer, amp_mode
from ssdet.modeling.noise import add_student_noise, check_noise_config
from ssdet.modeling.pseudo_targets import PSEUDO_CLS_TARGETS, score_weighted_classification
from ssdet.utils.ddp import unwrap_model
from ssdet.utils.errors import InputError

__all__ = [
    "AMPStudentTrainer",
    "SimpleStudentTrainer",
    "StudentTrainer",
]


# The two parts of a batch, as they prefix the logged loss names ("human/loss_cls", ...).
HUMAN = "human"
PSEUDO = "pseudo"
_DIVERGENCE_HINTS = {
    HUMAN: "Lower SOLVER.BASE_LR (or raise SOLVER.WARMUP_ITERS).",
    PSEUDO: "Lower SOLVER.BASE_LR or SSDET.SELF_TRAINING.PSEUDO_LOSS_WEIGHT, or check the pseudo "
    "labels.",
}
# Detectron2's DefaultTrainer writes the metrics every 20 iterations (its PeriodicWriter); the
# pseudo-label counts cover the same steps.
_STATS_PERIOD = 20


def _aspect_group(image: dict) -> int:
    # Detectron2's AspectRatioGroupedDataset: 0 = landscape (w > h), 1 = portrait or square.
    height, width = image["image"].shape[-2:]
    return 0 if width > height else 1


def _one_aspect_group(images: list[dict]) -> bool:
    return len({_aspect_group(image) for image in images}) == 1


class SimpleStudentTrainer(GradientAccumulationTrainer):
    """Detectron2's :class:`SimpleTrainer` with the student's step (see the module docstring).

    The data loader yields :class:`MixedBatch` pairs. Logged every ``gather_metric_period``
    steps (averaged over processes and accumulated batches): ``total_loss`` (the objective),
    ``loss_human``, ``loss_pseudo``, ``pseudo_loss_weight``, ``loss_human_avg`` /
    ``loss_pseudo_avg`` (moving averages), and each part's loss components as ``human/<name>``
    and ``pseudo/<name>`` (before ``PSEUDO_LOSS_TERM_WEIGHTS``). Every ``stats_period`` steps
    and at the last one, over those steps and all processes: ``pseudo_labels/images`` (the
    pseudo-labeled images trained on), ``pseudo_labels/boxes_per_image`` (their pseudo boxes per
    image) and ``pseudo_labels/boxes/<class>`` (the pseudo boxes of each class), as the mapped
    images hold them: after the augmentation's crop, without ignore regions.
    With joint training the loader yields :class:`~ssdet.data.joint.JointBatch` pairs of a
    :class:`MixedBatch` and classification images, whose ``loss_joint_cls`` is added to the
    objective (outside the pseudo-label weighting) and logged. Metrics are written
    synchronously: the finite-loss check must precede the optimizer step.

    Args:
        model, data_loader, optimizer: as for :class:`SimpleTrainer`.
        loss_weighting: how L_h and L_p combine; default ``PseudoLossWeighting()``.
        one_forward: forward both parts as one batch when the model is a ``DenseDetector`` and
            the parts share an aspect-ratio group (see the module docstring).
        pseudo_cls_target: one of :data:`~ssdet.modeling.pseudo_targets.PSEUDO_CLS_TARGETS`;
            "score" needs a RetinaNet and pseudo instances with ``gt_scores``.
        class_names: the names of the class ids, for the per-class counts; a class without one
            is logged as ``class_<id>``.
        stats_period: steps between two writes of the pseudo-label counts; default 20, the
            period of Detectron2's ``DefaultTrainer`` metric writers.
        max_iter: the training's ``max_iter``, at which the counts are also written; ``train``
            sets it, but a ``DefaultTrainer`` runs this step without calling its ``train``.
        accumulation_steps: mixed batches per optimizer step (see
            :class:`~ssdet.engine.accumulation.GradientAccumulationTrainer`).
        kwargs: the other arguments of :class:`SimpleTrainer` (or :class:`AMPTrainer`).

    Raises:
        InputError: an unknown ``pseudo_cls_target``, or "score" with a model that is no RetinaNet.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        loss_weighting: PseudoLossWeighting | None = None,
        one_forward: bool = True,
        pseudo_cls_target: str = "hard",
        class_names: Sequence[str] = (),
        stats_period: int = _STATS_PERIOD,
        max_iter: int | None = None,
        accumulation_steps: int = 1,
        **kwargs,
    ):
        super().__init__(
            model, data_loader, optimizer, accumulation_steps=accumulation_steps, **kwargs
        )
        self.loss_weighting = loss_weighting or PseudoLossWeighting()
        self.one_forward = one_forward
        detector = unwrap_model(model)
        self._dense_detector = detector if isinstance(detector, DenseDetector) else None
        if pseudo_cls_target not in PSEUDO_CLS_TARGETS:
            raise InputError(
                f"Unknown SSDET.SELF_TRAINING.PSEUDO_CLS_TARGET {pseudo_cls_target!r}; valid: "
                f"{', '.join(PSEUDO_CLS_TARGETS)}"
            )
        if pseudo_cls_target == "score" and not isinstance(detector, RetinaNet):
            raise InputError(
                "SSDET.SELF_TRAINING.PSEUDO_CLS_TARGET 'score' weighs RetinaNet's focal loss, but "
                f"the model is a {type(detector).__name__}; set it to 'hard'."
            )
        self.pseudo_cls_target = pseudo_cls_target
        # Each part's foreground-count average of a DenseDetector; None = not started.
        self._loss_normalizers: dict[str, float | None] = {HUMAN: None, PSEUDO: None}
        self.class_names = list(class_names)
        self.stats_period = stats_period
        if max_iter is not None:
            self.max_iter = max_iter
        # This process's pseudo-labeled images and boxes per class since the last stats write.
        self._pseudo_images = 0
        self._pseudo_boxes = torch.zeros(len(self.class_names), dtype=torch.int64)

    def run_step(self) -> None:
        """One step: per batch, forward both parts, combine their losses, backward; then log
        and update."""
        assert self.model.training, "[SimpleStudentTrainer] model was changed to eval mode!"
        steps = self.accumulation_steps
        data_time = 0.0
        value_sums: dict[str, float] = {}
        for micro in range(steps):
            start = time.perf_counter()
            batch: MixedBatch | JointBatch = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            classification = None
            if isinstance(batch, JointBatch):
                batch, classification = batch.detection, batch.classification
            self._count_pseudo_labels(batch.pseudo)

            if micro == 0 and self.zero_grad_before_forward:
                self.optimizer.zero_grad()
            with self._gradient_sync(micro):
                with self._autocast():
                    loss_dicts = self._detection_losses(batch)
                    # Through the (DDP-wrapped) model, so that the joint head's gradients are
                    # reduced.
                    joint_losses = self.model(classification) if classification is not None else {}
                loss = self.loss_weighting(loss_dicts.get(HUMAN, {}), loss_dicts.get(PSEUDO, {}))
                if joint_losses:
                    loss = loss._replace(total=loss.total + sum(joint_losses.values()))
                if micro == 0 and not self.zero_grad_before_forward:
                    self.optimizer.zero_grad()
                # Without accumulation the loss as it is, so that the default step is unchanged.
                self._backward(loss.total / steps if steps > 1 else loss.total)
            for name, value in self._checked_values(loss_dicts, loss, joint_losses).items():
                value_sums[name] = value_sums.get(name, 0.0) + value
        self.after_backward()
        if (self.iter + 1) % self.gather_metric_period == 0:
            values = {name: value / steps for name, value in value_sums.items()}
            self._write_student_metrics(values, data_time)
        self._write_pseudo_label_stats()
        self._optimizer_step()

    def _detection_losses(self, batch: MixedBatch) -> dict[str, dict[str, torch.Tensor]]:
        """Each part's loss dict (a part without images is left out)."""
        pairs = ((HUMAN, batch.human), (PSEUDO, batch.pseudo))
        parts = {part: images for part, images in pairs if images}
        both = batch.human + batch.pseudo
        if (
            self.one_forward
            and self._dense_detector is not None
            and len(parts) == 2
            and _one_aspect_group(both)
        ):
            with self._losses_per_part(len(batch.human)):
                return self.model(both)
        loss_dicts = {}
        for part, images in parts.items():
            with self._part_losses(part):
                loss_dicts[part] = self.model(images)
        return loss_dicts

    @contextlib.contextmanager
    def _losses_per_part(self, num_human: int) -> Iterator[None]:
        """Within: the DenseDetector's training forward returns ``{HUMAN: losses, PSEUDO:
        losses}``, computed by its class's ``forward_training`` on the first ``num_human`` rows
        and on the rest of the batch (DDP passes nested outputs through)."""
        detector = self._dense_detector
        forward_training = type(detector).forward_training

        def per_part(images, features, predictions, gt_instances):
            losses = {}
            for part, rows in ((HUMAN, slice(0, num_human)), (PSEUDO, slice(num_human, None))):
                part_images = ImageList(images.tensor[rows], images.image_sizes[rows])
                part_features = [f[rows] for f in features]
                # predictions: per output kind (logits, deltas, ...), a list over levels of (N, ...)
                part_predictions = [[level[rows] for level in kind] for kind in predictions]
                with self._part_losses(part):
                    part_losses = forward_training(
                        detector, part_images, part_features, part_predictions, gt_instances[rows]
                    )
                losses[part] = part_losses
            return losses

        # An instance attribute shadows the class's method for this forward only.
        detector.forward_training = per_part
        try:
            yield
        finally:
            del detector.forward_training

    @contextlib.contextmanager
    def _part_losses(self, part: str) -> Iterator[None]:
        """Within: a part's losses, with its own foreground-count average and, for the pseudo
        part with ``pseudo_cls_target`` "score", the score-weighted classification loss."""
        with self._part_normalizer(part):
            if part == PSEUDO and self.pseudo_cls_target == "score":
                with score_weighted_classification(self._dense_detector):
                    yield
            else:
                yield

    @contextlib.contextmanager
    def _part_normalizer(self, part: str) -> Iterator[None]:
        """Within: a DenseDetector's foreground-count average is the part's own."""
        detector = self._dense_detector
        if detector is None:
            yield
            return
        # DenseDetector._ema_update starts from its initial value when the attribute is absent.
        normalizer = self._loss_normalizers[part]
        if normalizer is not None:
            detector.loss_normalizer = normalizer
        elif hasattr(detector, "loss_normalizer"):
            del detector.loss_normalizer
        yield
        self._loss_normalizers[part] = getattr(detector, "loss_normalizer", None)

    def _checked_values(
        self,
        loss_dicts: dict[str, dict[str, torch.Tensor]],
        loss: StudentLoss,
        joint_losses: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """One batch's logged scalars as floats, after a stop on a non-finite loss.

        Raises:
            FloatingPointError: a part's loss (or the combined loss) is infinite or NaN.
        """
        scalars = {
            f"{part}/{name}": value
            for part, losses in loss_dicts.items()
            for name, value in losses.items()
        }
        scalars.update(joint_losses or {})
        scalars["total_loss"] = loss.total
        for name, value in (
            ("loss_human", loss.human),
            ("loss_pseudo", loss.pseudo),
            ("pseudo_loss_weight", loss.pseudo_weight),
        ):
            if value is not None:
                scalars[name] = value
        if loss.averages is not None:
            scalars["loss_human_avg"], scalars["loss_pseudo_avg"] = loss.averages
        # One device-to-host copy for all scalars.
        values = dict(
            zip(
                scalars,
                torch.stack([v.detach().float() for v in scalars.values()]).tolist(),
                strict=True,
            )
        )
        for part, losses in loss_dicts.items():
            part_values = {name: values[f"{part}/{name}"] for name in losses}
            if not all(math.isfinite(v) for v in part_values.values()):
                raise FloatingPointError(
                    f"The loss of the {part}-labeled images became infinite or NaN at iteration "
                    f"{self.iter}: {part_values}. {_DIVERGENCE_HINTS[part]}"
                )
        if not math.isfinite(values["total_loss"]):
            raise FloatingPointError(
                f"The combined loss became infinite or NaN at iteration {self.iter}: {values}"
            )
        return values

    def _write_student_metrics(self, values: dict[str, float], data_time: float) -> None:
        # As SimpleTrainer.write_metrics, but total_loss is the weighted objective, not the sum of
        # everything logged.
        storage = get_event_storage()
        storage.put_scalar("rank_data_time", data_time, cur_iter=self.iter)
        all_values = comm.gather({**values, "data_time": data_time})
        if comm.is_main_process():
            storage.put_scalar(
                "data_time", max(v.pop("data_time") for v in all_values), cur_iter=self.iter
            )
            storage.put_scalars(
                cur_iter=self.iter,
                **{k: sum(v[k] for v in all_values) / len(all_values) for k in all_values[0]},
            )

    def _count_pseudo_labels(self, images: list[dict]) -> None:
        """Add a batch's pseudo-labeled images and their boxes per class to the counts."""
        # A mapped training image always has instances (maybe none); a toy model's input may not.
        instances = [image["instances"] for image in images if "instances" in image]
        if not instances:
            return
        self._pseudo_images += len(instances)
        classes = torch.cat([i.gt_classes.cpu() for i in instances])
        classes = classes[classes >= 0]  # ignore regions have class -1
        counts = torch.bincount(classes, minlength=len(self._pseudo_boxes))
        growth = len(counts) - len(self._pseudo_boxes)
        if growth > 0:  # a class id beyond class_names
            self._pseudo_boxes = F.pad(self._pseudo_boxes, (0, growth))
        self._pseudo_boxes += counts

    def _write_pseudo_label_stats(self) -> None:
        """At the end of a stats period (and of training), log the period's pseudo-label counts
        over all processes, and start the next period."""
        last = self.iter + 1 == getattr(self, "max_iter", None)
        # Every process has the same number of pseudo-labeled images per batch: all of them or
        # none skip the gather.
        if self._pseudo_images == 0 or not ((self.iter + 1) % self.stats_period == 0 or last):
            return
        counts = comm.gather((self._pseudo_images, self._pseudo_boxes.tolist()))
        self._pseudo_images = 0
        self._pseudo_boxes.zero_()
        if not comm.is_main_process():
            return
        images = sum(n for n, _ in counts)
        per_class = [0] * max(len(boxes) for _, boxes in counts)
        for _, boxes in counts:
            for c, n in enumerate(boxes):
                per_class[c] += n
        scalars = {
            "pseudo_labels/images": images,
            "pseudo_labels/boxes_per_image": sum(per_class) / images,
        }
        for c, n in enumerate(per_class):
            name = self.class_names[c] if c < len(self.class_names) else f"class_{c}"
            scalars[f"pseudo_labels/boxes/{name}"] = n
        # Not smoothed: each value is already the period's.
        get_event_storage().put_scalars(cur_iter=self.iter, smoothing_hint=False, **scalars)

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        ret["loss_weighting"] = self.loss_weighting.state_dict()
        ret["loss_normalizers"] = dict(self._loss_normalizers)
        return ret

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.loss_weighting.load_state_dict(state_dict["loss_weighting"])
        self._loss_normalizers = dict(state_dict["loss_normalizers"])


class AMPStudentTrainer(SimpleStudentTrainer, AMPGradientAccumulationTrainer):
    """The student's step in mixed precision, as Detectron2's :class:`AMPTrainer` does it.

    Forwards run under ``torch.autocast("cuda")``; the loss is scaled by the grad scaler.
    """

    def run_step(self) -> None:
        assert torch.cuda.is_available(), "[AMPStudentTrainer] CUDA is required for AMP training!"
        super().run_step()


class CPUAutocastStudentTrainer(SimpleStudentTrainer, CPUAutocastGradientAccumulationTrainer):
    """The student's step with its forwards in bfloat16 autocast on the CPU (no loss scaling:
    bfloat16 has float32's exponent range); see :func:`~ssdet.engine.trainer.amp_mode`.
    """


class StudentTrainer(Trainer):
    """The student's ``DefaultTrainer``: mixed batches, the student step, the student noise.

    Differs from :class:`~ssdet.engine.Trainer` in three builders: the train loader is
    :func:`~ssdet.data.mixed.build_mixed_train_loader` (labeled subset + the pseudo-label store),
    the model gets ``SSDET.NOISE`` (:func:`~ssdet.modeling.noise.add_student_noise`), and the
    step is :class:`SimpleStudentTrainer` (:class:`AMPStudentTrainer` with
    ``SOLVER.AMP.ENABLED``), with ``SSDET.SELF_TRAINING``'s loss knobs and
    ``SSDET.SOLVER.GRAD_ACCUM_STEPS`` batches per optimizer step. Checkpointing, hooks, the LR
    schedule and evaluation are Detectron2's; the checkpoint also holds the loss moving averages.
    """

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        """:meth:`Trainer.check_config` plus the student's settings: the loss weighting, the
        pseudo-label targets, filter and augmentation policy, and the noise rates.

        Raises:
            InputError (or ValueError): the first bad setting.
        """
        if cfg.TEST.PRECISE_BN.ENABLED:
            # PreciseBN feeds the train loader's batches to the model as they are; the student's
            # are (human, pseudo) pairs.
            raise InputError("TEST.PRECISE_BN is not supported by the student; disable it.")
        super().check_config(cfg)
        PseudoLossWeighting(cfg)
        st = cfg.SSDET.SELF_TRAINING
        if st.PSEUDO_CLS_TARGET not in PSEUDO_CLS_TARGETS:
            raise InputError(
                f"Unknown SSDET.SELF_TRAINING.PSEUDO_CLS_TARGET {st.PSEUDO_CLS_TARGET!r}; valid: "
                f"{', '.join(PSEUDO_CLS_TARGETS)}"
            )
        if st.PSEUDO_RATIO > 0:
            pseudo_filter = PseudoLabelFilter.from_config(cfg)
            if pseudo_filter.ignore_score_thresh > 0 and not issubclass(
                META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), RetinaNet
            ):
                # Ignore regions are annotations of class -1; RetinaNet's anchor labeling turns
                # them into ignored anchors, other detectors would index classes with -1.
                raise InputError(
                    "SSDET.PSEUDO_LABELS.IGNORE_SCORE_THRESH needs a RetinaNet detector, not "
                    f"{cfg.MODEL.META_ARCHITECTURE}; set it to 0."
                )
            try:
                PolicyDatasetMapper.from_config(pseudo_augment_cfg(cfg), is_train=True)
            except InputError as e:
                raise InputError(f"SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY: {e}") from e
        check_noise_config(cfg)

    def __init__(self, cfg: CfgNode):
        # Validate the config before building anything.
        self.check_config(cfg)
        loss_weighting = PseudoLossWeighting(cfg)
        st = cfg.SSDET.SELF_TRAINING
        accumulation_steps = check_accumulation_steps(cfg.SSDET.SOLVER.GRAD_ACCUM_STEPS)
        super().__init__(cfg)
        trainer_class = {
            None: SimpleStudentTrainer,
            "cpu": CPUAutocastStudentTrainer,
            "cuda": AMPStudentTrainer,
        }[amp_mode(cfg)]
        # DefaultTrainer builds a SimpleTrainer/AMPTrainer from the model, loader and optimizer;
        # the student step replaces it around the same three.
        self._trainer = trainer_class(
            self._trainer.model,
            self._trainer.data_loader,
            self._trainer.optimizer,
            loss_weighting=loss_weighting,
            one_forward=st.ONE_FORWARD,
            pseudo_cls_target=st.PSEUDO_CLS_TARGET,
            # The train loader has opened the store: its metadata is there and readable.
            class_names=(
                read_metadata(cfg.SSDET.PSEUDO_LABELS.STORE)["class_names"]
                if st.PSEUDO_RATIO > 0
                else ()
            ),
            max_iter=self.max_iter,
            accumulation_steps=accumulation_steps,
        )

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        return add_student_noise(super().build_model(cfg), cfg)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return add_classification_batches(build_mixed_train_loader(cfg), cfg)
