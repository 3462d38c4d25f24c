"""ResNet backbones of any width, for a plain Detectron2 install: ssdet's mini models (R18 at half
width) are built by these builders, which Detectron2 lacks.

Detectron2's ``build_resnet_backbone`` asserts ``MODEL.RESNETS.RES2_OUT_CHANNELS == 64`` for R18
and R34. These builders read the same ``MODEL.RESNETS`` / ``MODEL.FPN`` keys and build the same
modules in the same order (so the same parameter names and the same random init) at any width;
bottleneck depths (50, 101, 152) go to Detectron2's builder unchanged. ssdet's own backbones are
these builders. This file imports nothing but Detectron2, so that it can be copied: a run's
``config_detectron2.yaml`` that names one of them has a copy beside it, to import before building
the model (docs/inference.md, "Inference with stock Detectron2").
"""

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, build_resnet_backbone

# (block type, blocks in res2..res5) of each ResNet depth, as Detectron2's build_resnet_backbone
# builds them (ssdet's backbone checkpoint format checks files against it too).
BLOCKS_PER_STAGE = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def build_resnet_any_width_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ResNet; basic-block depths (18, 34) at any width (stage ``i`` of res2..res5
    has ``RES2_OUT_CHANNELS * 2**i`` channels)."""
    resnets = cfg.MODEL.RESNETS
    block, blocks_per_stage = BLOCKS_PER_STAGE.get(resnets.DEPTH, ("", ()))
    if block != "basic":
        return build_resnet_backbone(cfg, input_shape)
    # Detectron2's own checks for basic blocks (less its 64-channel width): the keys that only
    # bottleneck blocks implement would otherwise be ignored without a word.
    unsupported = {
        "DEFORM_ON_PER_STAGE": any(resnets.DEFORM_ON_PER_STAGE),
        "RES5_DILATION": resnets.RES5_DILATION != 1,
        "NUM_GROUPS": resnets.NUM_GROUPS != 1,
    }
    for key, set_ in unsupported.items():
        if set_:
            raise ValueError(
                f"MODEL.RESNETS.{key} {getattr(resnets, key)!r} is not supported for "
                f"R{resnets.DEPTH} (basic blocks), as in Detectron2's build_resnet_backbone."
            )
    stem = BasicStem(input_shape.channels, resnets.STEM_OUT_CHANNELS, norm=resnets.NORM)
    in_channels, out_channels, stages = resnets.STEM_OUT_CHANNELS, resnets.RES2_OUT_CHANNELS, []
    for idx, num_blocks in enumerate(blocks_per_stage):
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                num_blocks,
                stride_per_block=[1 if idx == 0 else 2] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=resnets.NORM,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    return ResNet(stem, stages, out_features=resnets.OUT_FEATURES, freeze_at=freeze_at)


def build_retinanet_resnet_any_width_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """Detectron2's ``build_retinanet_resnet_fpn_backbone`` (FPN P3-P7) on
    :func:`build_resnet_any_width_backbone`."""
    bottom_up = build_resnet_any_width_backbone(cfg, input_shape)
    channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


# Once per process: ssdet imports this module, and a copy beside a run may be imported too.
for _builder in (build_resnet_any_width_backbone, build_retinanet_resnet_any_width_fpn_backbone):
    if _builder.__name__ not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(_builder)
