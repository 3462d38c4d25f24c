"""Gradient accumulation: K batches of B images per optimizer step equal one step of K x B."""

import itertools
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer, hooks
from detectron2.utils.events import EventStorage
from torch import nn

from ssdet.config import add_ssdet_config
from ssdet.engine import trainer as trainer_module
from ssdet.engine.accumulation import (
    AMPGradientAccumulationTrainer,
    CPUAutocastGradientAccumulationTrainer,
    GradientAccumulationTrainer,
)
from ssdet.engine.trainer import Trainer
from ssdet.pretrain.engine import PretrainTrainer
from ssdet.utils.errors import InputError

from ..conftest import REPO


class MeanLoss(nn.Module):
    """Two loss terms, each a mean over the batch's images, as a detector's normalized losses.

    Records the dtype of its matmul (autocast's choice) and the batch sizes it was given.
    """

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.dtypes: list[torch.dtype] = []
        self.batch_sizes: list[int] = []

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        out = self.fc(x)
        self.dtypes.append(out.dtype)
        self.batch_sizes.append(len(batch))
        return {
            "loss_fit": (out.float() - y).pow(2).sum(dim=1).mean(),
            "loss_l1": out.float().abs().mean(),
        }


def images(num: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"x": torch.randn(3, generator=g), "y": torch.randn(2, generator=g)} for _ in range(num)
    ]


def make_model() -> MeanLoss:
    torch.manual_seed(0)
    return MeanLoss()


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    # Momentum and weight decay: the second step depends on the first step's gradient.
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)


def run(trainer, steps: int) -> list[dict]:
    logged = []
    with EventStorage() as storage:
        for it in range(steps):
            trainer.iter = storage.iter = it
            trainer.run_step()
            logged.append({k: v for k, (v, _) in storage.latest().items() if "time" not in k})
    return logged


def test_two_accumulated_batches_of_b_equal_one_batch_of_2b():
    batches = [images(2, seed) for seed in range(4)]  # B = 2, two steps of K = 2
    merged = [batches[0] + batches[1], batches[2] + batches[3]]  # 2B = 4

    accumulated = make_model()
    trainer = GradientAccumulationTrainer(
        accumulated, iter(batches), sgd(accumulated), accumulation_steps=2
    )
    logged_accumulated = run(trainer, 2)
    plain = make_model()
    logged_plain = run(SimpleTrainer(plain, iter(merged), sgd(plain)), 2)

    assert accumulated.batch_sizes == [2, 2, 2, 2] and plain.batch_sizes == [4, 4]
    for a, b in zip(accumulated.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # The logged losses are the 2B batch's: the means of the two batches' means.
    for a, b in zip(logged_accumulated, logged_plain, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_the_lr_schedule_counts_optimizer_steps():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    data = (images(2, seed) for seed in itertools.count())
    trainer = GradientAccumulationTrainer(model, data, optimizer, accumulation_steps=3)
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    trainer.train(0, 2)
    assert len(model.batch_sizes) == 6  # 3 batches per iteration
    assert len(steps) == 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)  # two halvings
    assert trainer.storage.history("lr").values()[-1][0] == pytest.approx(0.5)


def test_precision_variants_run_their_forwards_as_their_step_would(monkeypatch):
    model = make_model()
    trainer = CPUAutocastGradientAccumulationTrainer(
        model, iter([images(2, 0), images(2, 1)]), sgd(model), accumulation_steps=2
    )
    run(trainer, 1)
    assert model.dtypes == [torch.bfloat16, torch.bfloat16]
    assert model.fc.weight.dtype == model.fc.weight.grad.dtype == torch.float32

    # CPU-only here: autocast("cuda") is inert on CPU tensors and the disabled scaler passes the
    # loss through; what is checked is the plumbing into AMPTrainer's scaler.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = make_model()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    trainer = AMPGradientAccumulationTrainer(
        model,
        iter([images(2, 0), images(2, 1)]),
        sgd(model),
        accumulation_steps=2,
        grad_scaler=scaler,
    )
    run(trainer, 1)
    assert model.batch_sizes == [2, 2] and "grad_scaler" in trainer.state_dict()


def mini_cfg(tmp_path, **solver):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(tmp_path)
    for key, value in solver.items():
        setattr(cfg.SSDET.SOLVER, key, value)
    return cfg


def test_trainer_takes_the_accumulating_step_and_refuses_bad_values(
    tiny_world, tmp_path, monkeypatch
):
    monkeypatch.setattr(trainer_module, "cpu_has_native_bfloat16", lambda: True)
    trainer = Trainer(mini_cfg(tmp_path, GRAD_ACCUM_STEPS=2))
    assert type(trainer._trainer) is GradientAccumulationTrainer
    assert trainer._trainer.accumulation_steps == 2
    cfg = mini_cfg(tmp_path, GRAD_ACCUM_STEPS=2)
    cfg.SOLVER.AMP.ENABLED = True
    assert type(Trainer(cfg)._trainer) is CPUAutocastGradientAccumulationTrainer
    monkeypatch.setattr(trainer_module, "cpu_has_native_bfloat16", lambda: False)
    assert type(Trainer(cfg)._trainer) is GradientAccumulationTrainer
    for bad in (0, -1):
        with pytest.raises(InputError, match="GRAD_ACCUM_STEPS must be an integer >= 1"):
            Trainer(mini_cfg(tmp_path, GRAD_ACCUM_STEPS=bad))
    # Pre-training has no such step (SimCLR's negatives come from one batch).
    with pytest.raises(InputError, match="GRAD_ACCUM_STEPS is for detector training"):
        PretrainTrainer(mini_cfg(tmp_path, GRAD_ACCUM_STEPS=2))
