"""Tests of the student noise: drop path in the ResNet, dropout in the RetinaNet head."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from ssdet.config import add_ssdet_config
from ssdet.modeling import (
    DropPath,
    add_drop_path,
    add_head_dropout,
    add_student_noise,
    build_ssdet_resnet_backbone,
)
from ssdet.utils.errors import InputError

from ..conftest import REPO
from .test_backbone import resnet_cfg

INSTANT = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")


def drop_paths(module: nn.Module) -> list[DropPath]:
    return [m for m in module.modules() if isinstance(m, DropPath)]


def test_drop_path_is_identity_at_eval_and_stochastic_in_training():
    drop = DropPath(0.5)
    x = torch.randn(64, 3, 4, 4)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(0)
    a, b = drop(x), drop(x)
    assert not torch.equal(a, b)
    assert DropPath(0.0).train()(x) is x


def test_drop_path_survival_rate_and_expectation():
    p = 0.3
    drop = DropPath(p).train()
    torch.manual_seed(0)
    x = torch.ones(20000, 2, 3)
    y = drop(x)
    kept = (y != 0).flatten(1)
    # A sample is dropped or kept whole.
    assert torch.equal(kept.all(1), kept.any(1))
    n = x.shape[0]
    survival = kept.all(1).float().mean().item()
    assert abs(survival - (1 - p)) < 4 * ((p * (1 - p) / n) ** 0.5)
    # Kept samples are rescaled so that the expectation is unchanged.
    assert torch.allclose(y[kept.all(1)], torch.full_like(y[kept.all(1)], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.03


def test_drop_path_rejects_bad_probabilities():
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            DropPath(p)


def test_drop_path_rates_grow_linearly_over_the_blocks():
    net = build_ssdet_resnet_backbone(resnet_cfg(18, 8), ShapeSpec(channels=3))
    add_drop_path(net, 0.2)
    rates = [d.drop_prob for d in drop_paths(net)]
    assert len(rates) == 8  # ResNet-18: 2 blocks in each of res2..res5
    assert rates == pytest.approx([0.2 * i / 7 for i in range(8)])
    # Each drop path sits on its block's residual branch, after the last conv's norm.
    assert all(isinstance(block.conv2.activation, DropPath) for s in net.stages for block in s)


@pytest.mark.parametrize("depth,width", [(18, 8), (50, 64)])
def test_same_state_dict_and_identity_at_eval(depth, width):
    cfg = resnet_cfg(depth, width)
    torch.manual_seed(0)
    builder = build_ssdet_resnet_backbone if depth < 50 else build_resnet_backbone
    plain = builder(cfg, ShapeSpec(channels=3))
    noisy = builder(cfg, ShapeSpec(channels=3))
    add_drop_path(noisy, 0.5)
    assert list(noisy.state_dict()) == list(plain.state_dict())
    noisy.load_state_dict(plain.state_dict())
    if depth >= 50:
        # Bottleneck blocks: the drop path follows conv3, the branch's last conv.
        assert all(isinstance(b.conv3.activation, DropPath) for s in noisy.stages for b in s)
        return
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), noisy.eval()
    with torch.no_grad():
        noisy_out = noisy(x)
        for name, value in plain(x).items():
            assert torch.equal(noisy_out[name], value)
        noisy.train()
        torch.manual_seed(1)
        first = noisy(x)["res5"]
        torch.manual_seed(2)
        assert not torch.allclose(noisy(x)["res5"], first)


def instant_cfg(**noise):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(INSTANT)
    cfg.MODEL.DEVICE = "cpu"
    for key, value in noise.items():
        setattr(cfg.SSDET.NOISE, key, value)
    return cfg


def test_student_noise_keeps_retinanet_weights_and_inference():
    torch.manual_seed(0)
    plain = build_model(instant_cfg())
    cfg = instant_cfg(DROP_PATH_RATE=0.2, DROPOUT=0.3)
    student = add_student_noise(build_model(cfg), cfg)
    assert list(student.state_dict()) == list(plain.state_dict())
    student.load_state_dict(plain.state_dict())
    assert len(drop_paths(student.backbone.bottom_up)) == 8
    for subnet in (student.head.cls_subnet, student.head.bbox_subnet):
        assert isinstance(subnet[-1], nn.Dropout) and subnet[-1].p == 0.3
    plain.eval(), student.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outputs = [
            model.head([model.backbone(x)[f] for f in model.head_in_features])
            for model in (plain, student)
        ]
    for a, b in zip(*outputs, strict=True):  # class logits and box deltas, per level
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_no_noise_by_default():
    cfg = instant_cfg()
    model = add_student_noise(build_model(cfg), cfg)
    assert not drop_paths(model)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_student_noise_input_errors():
    with pytest.raises(InputError, match="DROP_PATH_RATE must be in"):
        cfg = instant_cfg(DROP_PATH_RATE=1.0)
        add_student_noise(build_model(cfg), cfg)

    class NotRetinaNet(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

    cfg = instant_cfg(DROPOUT=0.1)
    model = NotRetinaNet(build_ssdet_resnet_backbone(resnet_cfg(18, 8), ShapeSpec(channels=3)))
    with pytest.raises(InputError, match="a RetinaNet or FCOS head"):
        add_student_noise(model, cfg)
    cfg = instant_cfg(DROP_PATH_RATE=0.1)
    with pytest.raises(InputError, match="ResNet"):
        add_student_noise(NotRetinaNet(nn.Identity()), cfg)


def test_head_dropout_is_identity_at_eval():
    head = build_model(instant_cfg()).head
    add_head_dropout(head, 0.5)
    features = [torch.randn(2, 64, 8 // 2**i + 1, 8 // 2**i + 1) for i in range(5)]
    head.eval()
    with torch.no_grad():
        assert torch.equal(head(features)[0][0], head(features)[0][0])
        head.train()
        assert not torch.equal(head(features)[0][0], head(features)[0][0])
