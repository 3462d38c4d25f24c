"""Joint training's model: RetinaNet with an ImageNet classification head on its backbone.

:class:`JointRetinaNet` is Detectron2's RetinaNet plus ``joint_head``, a global average pool and
a linear layer over one bottom-up (ResNet) feature. Owning the head makes it part of the module
that DDP wraps, so its gradients are reduced with the detector's. Classification images go
through the detector's own pixel normalization and bottom-up network; the FPN and the detection
head do not see them.

* Training input: a :class:`~ssdet.data.joint.JointBatch` gives the detection losses plus
  ``loss_joint_cls`` (the cross-entropy times ``SSDET.JOINT.LOSS_WEIGHT``); a
  :class:`~ssdet.data.joint.ClassificationBatch` alone gives ``loss_joint_cls`` only (the
  student's step forwards its parts separately). The batch accuracy goes to the event storage
  as ``joint/cls_accuracy``.
* Anything else is RetinaNet's input (a list of dicts), in training and inference alike: the
  joint model evaluates as the plain detector.
* :func:`detector_state_dict` drops the head, so the exported detector loads into a plain
  RetinaNet built from the same config.
"""

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils.events import get_event_storage
from torch import nn

from ssdet.modeling.backbone import bottom_up
from ssdet.structures import ClassificationBatch, JointBatch
from ssdet.utils.errors import InputError

__all__ = [
    "JOINT_HEAD_PREFIX",
    "JointClassificationHead",
    "JointRetinaNet",
    "detector_state_dict",
]

# State dict prefix of the classification head's parameters.
JOINT_HEAD_PREFIX = "joint_head."


class JointClassificationHead(nn.Module):
    """Global average pooling and a linear layer: image-level class logits from a feature map.

    Args:
        in_channels: channels of the pooled feature.
        num_classes: number of classes.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        if num_classes <= 0:
            raise InputError(f"The joint classification head needs >= 1 class, got {num_classes}")
        self.linear = nn.Linear(in_channels, num_classes)
        # As Detectron2's box classifier: small logits at the start, so the first steps'
        # cross-entropy (about log(num_classes)) does not swamp the detection losses.
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.constant_(self.linear.bias, 0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (N, C, H, W) feature map.

        Returns:
            (N, num_classes) logits.
        """
        return self.linear(features.mean(dim=(2, 3)))


def joint_feature_shape(backbone: Backbone, feature: str) -> ShapeSpec:
    """The shape of the bottom-up feature the classification head pools.

    Raises:
        InputError: the bottom-up network has no such output.
    """
    shapes = bottom_up(backbone).output_shape()
    if feature not in shapes:
        raise InputError(
            f"SSDET.JOINT.FEATURE {feature!r} is not a feature of the backbone's bottom-up "
            f"network, which outputs {sorted(shapes)}: pick one of them (or add it to "
            "MODEL.RESNETS.OUT_FEATURES)."
        )
    return shapes[feature]


def _num_classes(cfg: CfgNode) -> int:
    num_classes = cfg.SSDET.JOINT.NUM_CLASSES
    if num_classes <= 0:
        # A model knows no dataset: the trainer lists SSDET.JOINT.DATASET's classes first.
        raise InputError(
            f"SSDET.JOINT.NUM_CLASSES is {num_classes}: the joint model is built with the class "
            "count itself. 0 (= the dataset's) is resolved by the trainers (ssdet.engine.joint."
            "with_joint_num_classes); give the count to build it directly."
        )
    return num_classes


@META_ARCH_REGISTRY.register()
class JointRetinaNet(RetinaNet):
    """RetinaNet trained jointly with image classification (see the module docstring).

    Args:
        joint_head: the classification head (e.g. :class:`JointClassificationHead`).
        joint_feature: name of the bottom-up feature the head pools, e.g. "res5".
        joint_loss_weight: weight of the classification cross-entropy, >= 0.
        kwargs: :class:`RetinaNet`'s arguments.
    """

    @configurable
    def __init__(
        self,
        *,
        joint_head: nn.Module,
        joint_feature: str,
        joint_loss_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        joint_feature_shape(self.backbone, joint_feature)
        if joint_loss_weight < 0:
            raise InputError(f"SSDET.JOINT.LOSS_WEIGHT must be >= 0, got {joint_loss_weight}")
        self.joint_head = joint_head
        self.joint_feature = joint_feature
        self.joint_loss_weight = float(joint_loss_weight)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        ret = super().from_config(cfg)
        feature = cfg.SSDET.JOINT.FEATURE
        in_channels = joint_feature_shape(ret["backbone"], feature).channels
        ret.update(
            joint_head=JointClassificationHead(in_channels, _num_classes(cfg)),
            joint_feature=feature,
            joint_loss_weight=cfg.SSDET.JOINT.LOSS_WEIGHT,
        )
        return ret

    def forward(
        self, batched_inputs: JointBatch | ClassificationBatch | list[dict[str, Any]]
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        """
        Args:
            batched_inputs: a :class:`~ssdet.data.joint.JointBatch` or a
                :class:`~ssdet.data.joint.ClassificationBatch` (training), or RetinaNet's list
                of dicts (training or inference).

        Returns:
            The loss dict in training (detection losses and/or ``loss_joint_cls``); RetinaNet's
            ``[{"instances": Instances}]`` in inference.
        """
        if isinstance(batched_inputs, JointBatch):
            losses = super().forward(batched_inputs.detection)
            losses.update(self.classification_losses(batched_inputs.classification))
            return losses
        if isinstance(batched_inputs, ClassificationBatch):
            return self.classification_losses(batched_inputs)
        return super().forward(batched_inputs)

    def classification_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of classification images, through the bottom-up network and the head.

        Args:
            images: (N, C, H, W) unnormalized images in ``INPUT.FORMAT`` (e.g. uint8).

        Returns:
            (N, num_classes) logits.
        """
        images = self._move_to_current_device(images)
        images = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        features = bottom_up(self.backbone)(images)[self.joint_feature]
        return self.joint_head(features)

    def classification_losses(self, batch: ClassificationBatch) -> dict[str, torch.Tensor]:
        """The weighted cross-entropy of a classification batch; logs its accuracy.

        Args:
            batch: images (N, C, H, W) and labels (N,).

        Returns:
            ``{"loss_joint_cls": LOSS_WEIGHT * mean cross-entropy}``.
        """
        if not self.training:
            raise ValueError("JointRetinaNet computes classification losses in training mode only")
        logits = self.classification_logits(batch.images)
        labels = self._move_to_current_device(batch.labels)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        get_event_storage().put_scalar("joint/cls_accuracy", accuracy.item())
        return {"loss_joint_cls": self.joint_loss_weight * loss}


def detector_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A joint model's state dict without the classification head: the plain detector's.

    Args:
        state_dict: a model state dict (e.g. ``JointRetinaNet.state_dict()`` or the "model" of
            a Detectron2 checkpoint).

    Returns:
        The entries not under :data:`JOINT_HEAD_PREFIX`, in order.
    """
    return {k: v for k, v in state_dict.items() if not k.startswith(JOINT_HEAD_PREFIX)}
