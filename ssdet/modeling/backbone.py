"""ResNet backbones of any width, for detectors small enough to train on a CPU.

Detectron2's ``build_resnet_backbone`` fixes R18/R34 at 64 res2 channels. The mini world needs
narrower networks (see STACK.md: a full R18-FPN RetinaNet takes seconds per CPU iteration), so these
builders read the same ``MODEL.RESNETS`` keys and let ``RES2_OUT_CHANNELS`` and
``STEM_OUT_CHANNELS`` be any width for basic-block depths. Bottleneck depths (50, 101, 152) are
built by Detectron2's own builder unchanged.

They are the builders of :mod:`ssdet.modeling.any_width_resnet`, under the names ssdet's configs
use; that module imports Detectron2 only, so that a plain Detectron2 install can build the mini
models from a run's ``config_detectron2.yaml`` (see :mod:`ssdet.checkpoint.stock_config`).
"""

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import FPN, ResNet

from ssdet.modeling.any_width_resnet import (
    build_resnet_any_width_backbone,
    build_retinanet_resnet_any_width_fpn_backbone,
)
from ssdet.utils.errors import InputError


@BACKBONE_REGISTRY.register()
def build_ssdet_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """A Detectron2 :class:`ResNet`; basic-block depths (18, 34) may have any width.

    Stage ``i`` (res2..res5) has ``RES2_OUT_CHANNELS * 2**i`` channels, as in every ResNet.
    """
    return build_resnet_any_width_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_ssdet_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """RetinaNet's FPN (P3-P7) on :func:`build_ssdet_resnet_backbone`.

    The same network as Detectron2's ``build_retinanet_resnet_fpn_backbone``; only the bottom-up
    builder differs, so checkpoints keep Detectron2's parameter names.
    """
    return build_retinanet_resnet_any_width_fpn_backbone(cfg, input_shape)


def bottom_up(backbone: Backbone) -> Backbone:
    """The backbone's bottom-up network: an FPN's ``bottom_up``, or the backbone itself."""
    return backbone.bottom_up if isinstance(backbone, FPN) else backbone


def bottom_up_resnet(backbone: Backbone, needed_by: str) -> ResNet:
    """The backbone's bottom-up :class:`ResNet` (a ResNet-FPN's or a bare ResNet).

    Args:
        backbone: a detector's ``backbone``.
        needed_by: the config key that needs a ResNet, for the error.

    Raises:
        InputError: the bottom-up network is not a ResNet.
    """
    resnet = bottom_up(backbone)
    if not isinstance(resnet, ResNet):
        raise InputError(
            f"{needed_by} needs a ResNet or ResNet-FPN backbone, not {type(resnet).__name__}: "
            "use one (MODEL.BACKBONE.NAME) or turn the option off."
        )
    return resnet
