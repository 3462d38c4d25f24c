"""Gradient accumulation: one optimizer step from several batches, for GPUs too small for one.

With ``SSDET.SOLVER.GRAD_ACCUM_STEPS`` K > 1, each trainer iteration forwards and backwards K
batches of ``SOLVER.IMS_PER_BATCH`` images, each batch's loss divided by K, and then takes one
optimizer step: the effective batch is ``SOLVER.IMS_PER_BATCH x K`` images. The iteration counter
counts optimizer steps, so ``SOLVER.MAX_ITER``, the LR schedule (``SOLVER.STEPS``,
``WARMUP_ITERS``), ``CHECKPOINT_PERIOD`` and ``TEST.EVAL_PERIOD`` keep their meaning in updates;
the run reads K times as many images. The update equals one step on the K batches concatenated
when the detector's loss is a mean over the batch. Detectron2's RetinaNet divides its sums by a
moving average of the foreground-anchor count, updated at every forward, so there the equality is
close, not exact. BatchNorm layers in training mode see each batch on its own. Under DDP the first
K - 1 batches run under ``no_sync``: the gradients are reduced once, at the last backward.

:class:`GradientAccumulationTrainer` is Detectron2's ``SimpleTrainer`` step done K times; the
student's step (:class:`~ssdet.engine.student.SimpleStudentTrainer`) builds on it.
"""

import contextlib
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch.nn.parallel import DistributedDataParallel

from ssdet.utils.errors import InputError

__all__ = [
    "AMPGradientAccumulationTrainer",
    "CPUAutocastGradientAccumulationTrainer",
    "GradientAccumulationTrainer",
    "check_accumulation_steps",
]


def check_accumulation_steps(steps: int) -> int:
    """Validate ``SSDET.SOLVER.GRAD_ACCUM_STEPS``.

    Raises:
        InputError: ``steps`` is not a positive integer.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(
            f"SSDET.SOLVER.GRAD_ACCUM_STEPS must be an integer >= 1 (1 = no accumulation), got "
            f"{steps!r}"
        )
    return steps


class GradientAccumulationTrainer(SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` whose step accumulates the gradients of several batches.

    Each :meth:`run_step` draws ``accumulation_steps`` batches from the loader, forwards and
    backwards each with its loss divided by ``accumulation_steps``, then writes the losses
    averaged over the batches (Detectron2's ``_write_metrics``, which also stops on a non-finite
    loss) and takes one optimizer step. See the module docstring.

    The forward, backward and optimizer step go through :meth:`_autocast`, :meth:`_backward` and
    :meth:`_optimizer_step`, so that the mixed-precision variants override only those.

    Args:
        model, data_loader, optimizer: as for ``SimpleTrainer``.
        accumulation_steps: K >= 1, the batches per optimizer step.
        kwargs: the other arguments of ``SimpleTrainer`` (or ``AMPTrainer``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        accumulation_steps: int = 1,
        **kwargs,
    ):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.accumulation_steps = check_accumulation_steps(accumulation_steps)

    def run_step(self) -> None:
        """One optimizer step from ``accumulation_steps`` batches."""
        assert self.model.training, f"[{type(self).__name__}] model was changed to eval mode!"
        steps = self.accumulation_steps
        data_time = 0.0
        loss_means: dict[str, torch.Tensor] = {}
        for micro in range(steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            if micro == 0 and self.zero_grad_before_forward:
                self.optimizer.zero_grad()
            with self._gradient_sync(micro):
                with self._autocast():
                    loss_dict = self.model(data)
                if isinstance(loss_dict, torch.Tensor):
                    loss_dict = {"total_loss": loss_dict}
                losses = sum(loss_dict.values())
                if micro == 0 and not self.zero_grad_before_forward:
                    self.optimizer.zero_grad()
                self._backward(losses / steps)
            for name, value in loss_dict.items():
                loss_means[name] = loss_means.get(name, 0.0) + value.detach() / steps
        self.after_backward()
        self._write_metrics(loss_means, data_time)
        self._optimizer_step()

    def _gradient_sync(self, micro: int) -> contextlib.AbstractContextManager:
        """Around batch ``micro``'s forward and backward: DDP reduces the gradients only in the
        last batch's backward (its forward must run in the same context, see ``no_sync``)."""
        if micro < self.accumulation_steps - 1 and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _optimizer_step(self) -> None:
        self.optimizer.step()


class AMPGradientAccumulationTrainer(GradientAccumulationTrainer, AMPTrainer):
    """:class:`GradientAccumulationTrainer` in mixed precision, as Detectron2's ``AMPTrainer``.

    Forwards run under ``torch.autocast("cuda")``; every backward is of the scaled loss, and the
    grad scaler unscales the accumulated gradients once, in its ``step``.
    """

    def run_step(self) -> None:
        assert torch.cuda.is_available(), f"[{type(self).__name__}] CUDA is required for AMP!"
        super().run_step()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=self.precision)

    def _backward(self, loss: torch.Tensor) -> None:
        self.grad_scaler.scale(loss).backward()

    def _optimizer_step(self) -> None:
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()


class CPUAutocastGradientAccumulationTrainer(GradientAccumulationTrainer):
    """:class:`GradientAccumulationTrainer` with its forwards in bfloat16 autocast on the CPU (see
    :func:`~ssdet.engine.trainer.amp_mode`)."""

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16)
