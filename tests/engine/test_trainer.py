"""The supervised Trainer's step choice: bfloat16 autocast on the CPU with SOLVER.AMP.ENABLED."""

import itertools
import os

import torch
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import EventStorage
from torch import nn

from ssdet.config import add_ssdet_config
from ssdet.engine.trainer import CPUAutocastTrainer, Trainer, uses_cpu_autocast

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


def test_uses_cpu_autocast_only_for_amp_on_a_cpu_device():
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    assert not uses_cpu_autocast(cfg)
    cfg.SOLVER.AMP.ENABLED = True
    assert uses_cpu_autocast(cfg)
    cfg.MODEL.DEVICE = "cuda"
    assert not uses_cpu_autocast(cfg)


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


def test_trainer_picks_the_cpu_autocast_step(tiny_world, tmp_path):
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
