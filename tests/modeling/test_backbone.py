import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from ssdet.config import add_ssdet_config
from ssdet.modeling import build_ssdet_resnet_backbone, build_ssdet_retinanet_resnet_fpn_backbone


def resnet_cfg(depth: int, width: int):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = width
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = width if depth < 50 else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 24
    return cfg


@pytest.mark.parametrize("depth,width", [(18, 16), (34, 8), (18, 64)])
def test_narrow_basic_block_resnet(depth, width):
    net = build_ssdet_resnet_backbone(resnet_cfg(depth, width), ShapeSpec(channels=3)).eval()
    out = net(torch.randn(2, 3, 64, 96))
    for i, name in enumerate(["res3", "res4", "res5"]):
        stride = 8 * 2**i
        assert out[name].shape == (2, width * 2 ** (i + 1), 64 // stride, 96 // stride)
        assert net.output_shape()[name].stride == stride


def test_bottleneck_depth_uses_detectron2_builder():
    net = build_ssdet_resnet_backbone(resnet_cfg(50, 64), ShapeSpec(channels=3))
    assert net.output_shape()["res5"].channels == 2048


def test_retinanet_fpn_levels():
    cfg = resnet_cfg(18, 16)
    fpn = build_ssdet_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    out = fpn(torch.randn(1, 3, 128, 128))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    assert all(v.shape[1] == 24 for v in out.values())
    assert out["p7"].shape[-1] == 1


@pytest.mark.parametrize(
    "key,value",
    [("DEFORM_ON_PER_STAGE", [False, True, False, False]), ("RES5_DILATION", 2), ("NUM_GROUPS", 2)],
)
def test_keys_basic_blocks_lack_are_refused_as_detectron2_does(key, value):
    cfg = resnet_cfg(18, 16)
    setattr(cfg.MODEL.RESNETS, key, value)
    with pytest.raises(ValueError, match=f"MODEL.RESNETS.{key} .* not supported for R18"):
        build_ssdet_resnet_backbone(cfg, ShapeSpec(channels=3))
