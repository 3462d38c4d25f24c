"""ResNet backbones of any width, for detectors small enough to train on a CPU.

Detectron2's ``build_resnet_backbone`` fixes R18/R34 at 64 res2 channels. The mini world needs
narrower networks (see STACK.md: a full R18-FPN RetinaNet takes seconds per CPU iteration), so this
builder reads the same ``MODEL.RESNETS`` keys and lets ``RES2_OUT_CHANNELS`` and
``STEM_OUT_CHANNELS`` be any width for basic-block depths. Bottleneck depths (50, 101, 152) are
built by Detectron2's own builder unchanged.
"""

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, build_resnet_backbone

_BASIC_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


@BACKBONE_REGISTRY.register()
def build_ssdet_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """A Detectron2 :class:`ResNet`; basic-block depths (18, 34) may have any width.

    Stage ``i`` (res2..res5) has ``RES2_OUT_CHANNELS * 2**i`` channels, as in every ResNet.
    """
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in _BASIC_BLOCKS_PER_STAGE:
        return build_resnet_backbone(cfg, input_shape)
    norm = cfg.MODEL.RESNETS.NORM
    stem = BasicStem(input_shape.channels, cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, norm=norm)
    in_channels = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
    out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    stages = []
    for idx, num_blocks in enumerate(_BASIC_BLOCKS_PER_STAGE[depth]):
        first_stride = 1 if idx == 0 else 2
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=norm,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(
        stem,
        stages,
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_ssdet_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """RetinaNet's FPN (P3-P7) on :func:`build_ssdet_resnet_backbone`.

    The same network as Detectron2's ``build_retinanet_resnet_fpn_backbone``; only the bottom-up
    builder differs, so checkpoints keep Detectron2's parameter names.
    """
    bottom_up = build_ssdet_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
