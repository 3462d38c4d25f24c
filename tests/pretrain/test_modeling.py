"""Pre-training models: the detector's own ResNet under a classifier or a SimCLR head."""

import os

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ssdet.config import add_ssdet_config
from ssdet.pretrain import PretrainTrainer, SimCLR, SupervisedClassifier, build_pretrain_backbone

from ..conftest import REPO


def detector_cfg(name: str = "mini/retinanet_instant_test.yaml"):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", name))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def batch(num: int, size: int = 32, views: int = 1) -> list[dict]:
    torch.manual_seed(0)

    def image():
        return torch.randint(0, 256, (3, size, size), dtype=torch.uint8)

    key = "image" if views == 1 else "views"
    return [
        {key: image() if views == 1 else (image(), image()), "class_id": i % 3} for i in range(num)
    ]


def test_backbone_has_the_detectors_parameter_names_and_shapes():
    cfg = detector_cfg()
    detector = build_model(cfg).backbone.bottom_up.state_dict()
    pretrain = build_pretrain_backbone(cfg).state_dict()
    assert pretrain.keys() == detector.keys()
    assert all(pretrain[k].shape == detector[k].shape for k in detector)


def test_frozen_parts_of_a_detector_config_all_train():
    cfg = detector_cfg()
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    backbone = build_pretrain_backbone(cfg)
    assert all(p.requires_grad for p in backbone.parameters())
    assert isinstance(backbone.stem.conv1.norm, torch.nn.BatchNorm2d)


def test_supervised_classifier_loss_and_scores():
    model = SupervisedClassifier(detector_cfg(), num_classes=3)
    with EventStorage():
        losses = model(batch(4))
    assert set(losses) == {"loss_cls"} and torch.isfinite(losses["loss_cls"])
    losses["loss_cls"].backward()
    assert model.backbone.stem.conv1.weight.grad is not None
    model.eval()
    outputs = model(batch(2))
    assert len(outputs) == 2 and outputs[0]["scores"].shape == (3,)


def test_simclr_loss_trains_backbone_and_head():
    cfg = detector_cfg()
    cfg.SSDET.PRETRAIN.SIMCLR.PROJECTION_DIM = 8
    model = SimCLR(cfg)
    losses = model(batch(4, views=2))
    assert set(losses) == {"loss_nt_xent"} and torch.isfinite(losses["loss_nt_xent"])
    losses["loss_nt_xent"].backward()
    assert model.backbone.res5[0].conv1.weight.grad.abs().sum() > 0
    assert model.projection[-1].out_features == 8
    model.eval()
    assert model(batch(2))[0]["features"].shape == (model.feature_dim,)


def test_optimizer_follows_ssdet_solver_optimizer():
    cfg = detector_cfg()
    model = SupervisedClassifier(cfg, num_classes=3)
    assert isinstance(PretrainTrainer.build_optimizer(cfg, model), torch.optim.SGD)
    cfg.SSDET.SOLVER.OPTIMIZER = "ADAMW"
    assert isinstance(PretrainTrainer.build_optimizer(cfg, model), torch.optim.AdamW)
