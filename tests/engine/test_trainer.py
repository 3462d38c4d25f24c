"""The supervised Trainer's step choice: bfloat16 autocast on the CPU with SOLVER.AMP.ENABLED."""

import itertools
import os

import torch
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import EventStorage
from torch import nn

from ssdet.config import add_ssdet_config
from ssdet.engine import trainer as trainer_module
from ssdet.engine.trainer import CPUAutocastTrainer, Trainer, amp_mode, uses_cpu_autocast

from ..conftest import REPO


class LinearLoss(nn.Module):
    """A loss through one linear layer; records the dtype autocast gave its output."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        y = self.fc(torch.stack([d["x"] for d in batch]))
        self.dtypes.append(y.dtype)
        return {"loss": y.float().pow(2).mean()}


def native_bfloat16(monkeypatch, native: bool) -> None:
    """Makes ssdet see a CPU with (or without) native bfloat16, whatever this machine has."""
    monkeypatch.setattr(trainer_module, "cpu_has_native_bfloat16", lambda: native)


def test_amp_mode_is_bfloat16_only_on_a_cpu_that_has_it(monkeypatch):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    assert amp_mode(cfg) is None and not uses_cpu_autocast(cfg)
    cfg.SOLVER.AMP.ENABLED = True
    native_bfloat16(monkeypatch, True)
    assert amp_mode(cfg) == "cpu" and uses_cpu_autocast(cfg)
    # Emulated bfloat16 is ~7x slower than float32 (AVX2-only CPUs): AMP falls back to float32.
    native_bfloat16(monkeypatch, False)
    assert amp_mode(cfg) is None and not uses_cpu_autocast(cfg)
    cfg.MODEL.DEVICE = "cuda"
    assert amp_mode(cfg) == "cuda" and not uses_cpu_autocast(cfg)


def test_cpu_bfloat16_probe_reads_this_cpu():
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    expected = probe is None or probe()
    assert trainer_module.cpu_has_native_bfloat16() is bool(expected)


def test_cpu_autocast_step_forwards_in_bfloat16_and_keeps_float32_weights():
    torch.manual_seed(0)
    model = LinearLoss()
    before = model.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = CPUAutocastTrainer(model, itertools.repeat([{"x": torch.ones(4)}] * 2), optimizer)
    with EventStorage() as storage:
        trainer.iter = storage.iter = 0
        trainer.run_step()
        assert storage.latest()["total_loss"][0] > 0
    assert model.dtypes == [torch.bfloat16]
    assert model.fc.weight.dtype == model.fc.weight.grad.dtype == torch.float32
    assert not torch.equal(model.fc.weight.detach(), before)


def test_trainer_picks_the_cpu_autocast_step(tiny_world, tmp_path, monkeypatch):
    native_bfloat16(monkeypatch, True)
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(tmp_path)
    assert type(Trainer(cfg)._trainer) is SimpleTrainer
    cfg.SOLVER.AMP.ENABLED = True
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, CPUAutocastTrainer)
    assert not isinstance(trainer._trainer, AMPTrainer)
    native_bfloat16(monkeypatch, False)
    assert type(Trainer(cfg)._trainer) is SimpleTrainer
