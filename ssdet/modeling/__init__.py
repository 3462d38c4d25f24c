"""ssdet's models. Importing this module registers its backbones with Detectron2."""

from ssdet.modeling.backbone import (
    build_ssdet_resnet_backbone,
    build_ssdet_retinanet_resnet_fpn_backbone,
)

__all__ = ["build_ssdet_resnet_backbone", "build_ssdet_retinanet_resnet_fpn_backbone"]
