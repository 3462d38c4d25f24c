"""Pre-training models: the detector's ResNet, globally pooled, with a classifier or SimCLR head.

Every model takes Detectron2-style batched inputs (a list of dicts from
:class:`~ssdet.pretrain.data.PretrainMapper`) and, in training, returns a dict of losses, so
Detectron2's ``SimpleTrainer``, ``DefaultTrainer`` hooks and ``DetectionCheckpointer`` run it
unchanged. ``model.backbone`` is exactly the ResNet the detector builds from the same config (its
``bottom_up``), which is what :func:`ssdet.pretrain.engine.save_pretrained_backbone` exports.
"""

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet
from torch import nn
from torch.nn import functional as F

from ssdet.modeling.backbone import build_ssdet_resnet_backbone
from ssdet.pretrain.losses import nt_xent_loss

__all__ = ["PretrainModel", "SimCLR", "SupervisedClassifier", "build_pretrain_backbone"]

# The pre-trained ResNet feeds global pooling from its last stage only.
_LAST_STAGE = "res5"


def build_pretrain_backbone(cfg: CfgNode) -> ResNet:
    """The detector's ResNet (``MODEL.RESNETS``: depth, widths, norm) as pre-training trains it.

    Three settings of the detector config do not apply to pre-training and are changed on a copy:
    all stages train (``FREEZE_AT`` 0: a frozen stem would stay random), FrozenBN becomes BN
    (frozen statistics cannot be learned from scratch; the parameter names are the same), and
    only ``res5`` is computed for pooling. Parameter names are unchanged by all three.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if cfg.MODEL.RESNETS.NORM == "FrozenBN":
        cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = [_LAST_STAGE]
    return build_ssdet_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


class PretrainModel(nn.Module):
    """A ResNet with input normalization and global average pooling of its last stage.

    Args:
        backbone: the ResNet (from :func:`build_pretrain_backbone`).
        pixel_mean: per-channel mean of the input, in ``INPUT.FORMAT`` order, 0-255 scale.
        pixel_std: per-channel standard deviation of the input.
    """

    def __init__(self, *, backbone: ResNet, pixel_mean: list[float], pixel_std: list[float]):
        super().__init__()
        self.backbone = backbone
        # Not saved: the detector keeps its own copy (MODEL.PIXEL_MEAN), as Detectron2 models do.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {
            "backbone": build_pretrain_backbone(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled features."""
        return self.backbone.output_shape()[_LAST_STAGE].channels

    def normalize(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Stack uint8 images (C, H, W) of one size into a normalized float batch (N, C, H, W)."""
        x = torch.stack(images).to(self.device, non_blocking=True).float()
        return (x - self.pixel_mean) / self.pixel_std

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pooled last-stage features (N, C) of a normalized batch (N, 3, H, W)."""
        return self.backbone(x)[_LAST_STAGE].mean(dim=(2, 3))

    def extract_features(self, batched_inputs: list[dict]) -> torch.Tensor:
        """Pooled features (N, C) of the ``"image"`` of each input."""
        return self.pooled_features(self.normalize([d["image"] for d in batched_inputs]))


class SupervisedClassifier(PretrainModel):
    """Supervised pre-training: a linear classifier on the pooled features, cross-entropy loss.

    Args:
        num_classes: number of classes of the dataset.
        See :class:`PretrainModel` for the others.
    """

    @configurable
    def __init__(self, *, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    @classmethod
    def from_config(cls, cfg: CfgNode, num_classes: int) -> dict:
        return {**super().from_config(cfg), "num_classes": num_classes}

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        """Training: ``{"loss_cls"}``; inference: ``[{"scores": (num_classes,) logits}]``."""
        logits = self.classifier(self.extract_features(batched_inputs))
        if not self.training:
            return [{"scores": s} for s in logits]
        labels = torch.as_tensor([d["class_id"] for d in batched_inputs], device=self.device)
        return {"loss_cls": F.cross_entropy(logits, labels)}


class SimCLR(PretrainModel):
    """SimCLR: an MLP projection head on the pooled features, NT-Xent loss between two views.

    Labels are never used. The two views of a batch go through the backbone together, so that
    batch normalization sees both.

    Args:
        projection_dim: output size of the projection head (the compared embedding).
        projection_hidden_dim: hidden size of the head; 0 = the backbone's feature size.
        temperature: NT-Xent temperature.
        gather_negatives: use every process's views as negatives (see :func:`nt_xent_loss`).
        See :class:`PretrainModel` for the others.
    """

    @configurable
    def __init__(
        self,
        *,
        projection_dim: int = 128,
        projection_hidden_dim: int = 0,
        temperature: float = 0.2,
        gather_negatives: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        hidden = projection_hidden_dim or self.feature_dim
        self.projection = nn.Sequential(
            nn.Linear(self.feature_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, projection_dim),
        )
        self.temperature = temperature
        self.gather_negatives = gather_negatives

    @classmethod
    def from_config(cls, cfg: CfgNode, num_classes: int | None = None) -> dict:
        sc = cfg.SSDET.PRETRAIN.SIMCLR
        return {
            **super().from_config(cfg),
            "projection_dim": sc.PROJECTION_DIM,
            "projection_hidden_dim": sc.PROJECTION_HIDDEN_DIM,
            "temperature": sc.TEMPERATURE,
            "gather_negatives": sc.GATHER_NEGATIVES,
        }

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        """Training (inputs with two ``"views"``): ``{"loss_nt_xent"}``; inference (inputs with
        ``"image"``): ``[{"features": (C,) pooled backbone features}]``."""
        if not self.training:
            return [{"features": f} for f in self.extract_features(batched_inputs)]
        views = [d["views"] for d in batched_inputs]
        x = self.normalize([v[0] for v in views] + [v[1] for v in views])
        z1, z2 = self.projection(self.pooled_features(x)).chunk(2)
        loss = nt_xent_loss(z1, z2, self.temperature, self.gather_negatives)
        return {"loss_nt_xent": loss}
