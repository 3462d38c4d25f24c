"""Model noise of the Noisy Student: stochastic depth in the ResNet, dropout in the head.

Noisy Student trains the student (never the teacher) with stochastic depth and dropout on top of
data augmentation. Both are added to a built Detectron2 model, in place, without new parameters
or buffers: the student's state dict has exactly the keys of the plain model, so checkpoints move
between teacher and student and load in stock Detectron2. Both are the identity in eval mode.

* Stochastic depth (drop path, Huang et al. 2016): each residual block of the ResNet skips its
  residual branch for a training image with a probability that grows linearly with depth, from 0
  at the first block to ``SSDET.NOISE.DROP_PATH_RATE`` at the last, as in Noisy Student and timm.
  A :class:`DropPath` goes into the ``activation`` slot of the branch's last conv
  (Detectron2's ``Conv2d`` applies it after the norm, and the blocks leave it empty), i.e. right
  before the branch is added to the shortcut; Detectron2's block classes and builders are used
  as they are, for every depth.
* Dropout (``SSDET.NOISE.DROPOUT``): on the last hidden features of RetinaNet's classification
  and box subnets, just before their prediction convs, at every FPN level; the detection
  counterpart of Noisy Student's dropout before the classifier.
"""

import logging

import torch
from detectron2.config import CfgNode
from detectron2.layers import Conv2d
from detectron2.modeling import ResNet
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, DeformBottleneckBlock
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from ssdet.modeling.backbone import bottom_up_resnet
from ssdet.utils.errors import InputError

__all__ = [
    "DropPath",
    "add_drop_path",
    "add_head_dropout",
    "add_student_noise",
    "check_noise_config",
]

logger = logging.getLogger(__name__)


class DropPath(nn.Module):
    """Drop a residual branch per sample (stochastic depth); the identity in eval mode.

    In training, each sample's input is zeroed with probability ``drop_prob`` and otherwise
    scaled by ``1 / (1 - drop_prob)``, so the expected output equals the input.

    Args:
        drop_prob: probability in [0, 1) of dropping a sample's branch.
    """

    def __init__(self, drop_prob: float):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (N, ...) the residual branch's output for N samples.

        Returns:
            (N, ...) ``x`` with whole samples zeroed and the rest rescaled (training), or ``x``.
        """
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def _residual_branch_output_conv(block: nn.Module) -> Conv2d:
    """The last conv (with its norm) of a Detectron2 ResNet block's residual branch."""
    if isinstance(block, BasicBlock):
        return block.conv2
    if isinstance(block, BottleneckBlock | DeformBottleneckBlock):
        return block.conv3
    raise TypeError(
        f"Stochastic depth supports Detectron2's BasicBlock and (Deform)BottleneckBlock, not "
        f"{type(block).__name__}"
    )


def add_drop_path(resnet: ResNet, drop_path_rate: float) -> None:
    """Add stochastic depth to every residual block of a Detectron2 ResNet, in place.

    Block ``i`` of the ``n`` blocks of res2..res5 (counted together) drops its residual branch
    with probability ``drop_path_rate * i / (n - 1)``: 0 for the first, ``drop_path_rate`` for
    the last. Frozen blocks (``MODEL.BACKBONE.FREEZE_AT``) are noised too: their outputs feed
    the trained layers after them.

    Args:
        resnet: the ResNet (e.g. an FPN's ``bottom_up``).
        drop_path_rate: drop probability of the last block, in [0, 1).
    """
    blocks = [block for stage in resnet.stages for block in stage]
    rates = torch.linspace(0.0, drop_path_rate, len(blocks)).tolist()
    for block, rate in zip(blocks, rates, strict=True):
        conv = _residual_branch_output_conv(block)
        if conv.activation is not None:
            raise ValueError(
                f"{type(block).__name__}'s last residual conv already has an activation "
                f"({conv.activation}); stochastic depth would replace it"
            )
        conv.activation = DropPath(rate)


def add_head_dropout(head: RetinaNetHead, dropout: float) -> None:
    """Add dropout after the last hidden layer of RetinaNet's two subnets, in place.

    The dropout goes at the end of ``cls_subnet`` and ``bbox_subnet``, so it acts on the
    features that ``cls_score`` and ``bbox_pred`` read; appended parameter-free modules leave the
    state dict keys unchanged.

    Args:
        head: the RetinaNet head.
        dropout: element-wise dropout probability, in [0, 1).
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {dropout}")
    head.cls_subnet.append(nn.Dropout(dropout))
    head.bbox_subnet.append(nn.Dropout(dropout))


def check_noise_config(cfg: CfgNode) -> None:
    """Refuse ``SSDET.NOISE`` rates outside [0, 1).

    Raises:
        InputError: the first such rate.
    """
    for key in ("DROP_PATH_RATE", "DROPOUT"):
        value = cfg.SSDET.NOISE[key]
        if not 0.0 <= value < 1.0:
            raise InputError(f"SSDET.NOISE.{key} must be in [0, 1), got {value}")


def add_student_noise(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """Add the student noise of ``cfg.SSDET.NOISE`` to a built detector, in place.

    Args:
        model: a Detectron2 meta-architecture with a ``backbone`` (a RetinaNet or FCOS for
            dropout).
        cfg: the config; rates of 0 (the defaults) leave the model unchanged.

    Returns:
        ``model``.

    Raises:
        InputError: a rate outside [0, 1), or a model the noise does not apply to.
    """
    check_noise_config(cfg)
    drop_path_rate, dropout = cfg.SSDET.NOISE.DROP_PATH_RATE, cfg.SSDET.NOISE.DROPOUT
    if drop_path_rate > 0:
        add_drop_path(
            bottom_up_resnet(model.backbone, "SSDET.NOISE.DROP_PATH_RATE"), drop_path_rate
        )
    if dropout > 0:
        # RetinaNet's head or a subclass of it (FCOSHead: its centerness reads bbox_subnet).
        if not isinstance(getattr(model, "head", None), RetinaNetHead):
            raise InputError(
                f"SSDET.NOISE.DROPOUT applies to a RetinaNet or FCOS head, not to "
                f"{type(model).__name__}'s; set it to 0."
            )
        add_head_dropout(model.head, dropout)
    logger.info("Student noise: drop path rate %s, head dropout %s", drop_path_rate, dropout)
    return model
