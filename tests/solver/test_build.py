import pytest
import torch
from detectron2.config import get_cfg

from ssdet.config import add_ssdet_config
from ssdet.solver import build_optimizer
from ssdet.utils.errors import InputError


def _cfg(optimizer: str):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.SSDET.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.BASE_LR = 0.003
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    return cfg


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))


def test_sgd_is_detectron2s():
    optimizer = build_optimizer(_cfg("SGD"), _model())
    assert isinstance(optimizer, torch.optim.SGD)


def test_adamw_groups_and_hyperparameters():
    cfg = _cfg("adamw")
    cfg.SSDET.SOLVER.BETAS = (0.8, 0.99)
    optimizer = build_optimizer(cfg, _model())
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(decay) == 4
    # Conv weight and bias decay; GroupNorm weight and bias do not (WEIGHT_DECAY_NORM 0).
    assert sorted(decay.values()) == [0.0, 0.0, 0.05, 0.05]
    assert all(g["betas"] == (0.8, 0.99) and g["lr"] == 0.003 for g in optimizer.param_groups)


def test_adamw_steps_reduce_a_loss():
    torch.manual_seed(0)
    model = _model()
    optimizer = build_optimizer(_cfg("ADAMW"), model)
    x = torch.randn(4, 3, 8, 8)
    losses = []
    for _ in range(20):
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_unknown_optimizer_is_named():
    with pytest.raises(InputError, match="LAMB"):
        build_optimizer(_cfg("LAMB"), _model())
