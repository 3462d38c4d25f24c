"""Tests of ssdet/modeling/fcos.py: Detectron2's FCOS built from a YAML config."""

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ssdet.engine.defaults import load_cfg
from ssdet.utils.errors import InputError

from ..conftest import REPO

CONFIG = os.path.join(REPO, "configs", "mini", "fcos_instant_test.yaml")


def fcos_cfg(*opts):
    cfg = load_cfg(CONFIG, list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def batch(num_images: int = 2) -> list[dict]:
    images = []
    for i in range(num_images):
        instances = Instances((64, 64))
        instances.gt_boxes = Boxes(torch.tensor([[4.0 + i, 6.0, 40.0, 44.0]]))
        instances.gt_classes = torch.tensor([3])
        image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
        images.append({"image": image, "instances": instances})
    return images


def test_ssdet_fcos_defaults_are_detectron2s():
    # A stock config (no SSDET keys) falls back to FCOS_DEFAULTS, so the two must agree for a run
    # with default SSDET.FCOS to rebuild the same model there.
    from detectron2.config import CfgNode as CN

    from ssdet.config import add_ssdet_config
    from ssdet.modeling.fcos import FCOS_DEFAULTS

    cfg = CN()
    add_ssdet_config(cfg)
    assert (
        dict(cfg.SSDET.FCOS)
        == FCOS_DEFAULTS
        == {
            "CENTER_SAMPLING_RADIUS": 1.5,
            "NMS_THRESH_TEST": 0.6,
        }
    )


def test_fcos_builds_from_yaml_with_retinanet_keys():
    cfg = fcos_cfg("MODEL.RETINANET.NUM_CLASSES", 7, "SSDET.FCOS.CENTER_SAMPLING_RADIUS", 2.0)
    model = build_model(cfg)
    assert isinstance(model, FCOS) and type(model).__name__ == "SsdetFCOS"
    assert model.num_classes == 7 and model.center_sampling_radius == 2.0
    assert model.head.cls_score.out_channels == 7  # one anchor point per location
    assert model.head_in_features == list(cfg.MODEL.RETINANET.IN_FEATURES)
    assert model.test_nms_thresh == cfg.SSDET.FCOS.NMS_THRESH_TEST
    assert len(model.head.cls_subnet) // 3 == cfg.MODEL.RETINANET.NUM_CONVS  # conv, GN, ReLU


def test_fcos_trains_and_predicts():
    torch.manual_seed(0)
    model = build_model(fcos_cfg())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage():
        losses = model(batch())
        assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
    assert model.head.ctrness.weight.grad.abs().sum() > 0
    optimizer.step()
    model.eval()
    with torch.no_grad():
        (output,) = model(batch(1))
    instances = output["instances"]
    assert instances.image_size == (64, 64)
    assert len(instances) <= fcos_cfg().TEST.DETECTIONS_PER_IMAGE
    assert bool((instances.scores >= fcos_cfg().MODEL.RETINANET.SCORE_THRESH_TEST).all())


def test_fcos_in_features_the_backbone_lacks_is_an_input_error():
    with pytest.raises(InputError, match=r"IN_FEATURES names \['p9'\]"):
        build_model(fcos_cfg("MODEL.RETINANET.IN_FEATURES", ["p3", "p9"]))
