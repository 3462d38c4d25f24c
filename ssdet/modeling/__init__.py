"""ssdet's models. Importing this module registers its backbones and meta-architectures with
Detectron2."""

from ssdet.modeling.any_width_resnet import (
    build_resnet_any_width_backbone,
    build_retinanet_resnet_any_width_fpn_backbone,
)
from ssdet.modeling.backbone import (
    build_ssdet_resnet_backbone,
    build_ssdet_retinanet_resnet_fpn_backbone,
)
from ssdet.modeling.fcos import SsdetFCOS
from ssdet.modeling.joint import JointClassificationHead, JointRetinaNet, detector_state_dict
from ssdet.modeling.noise import DropPath, add_drop_path, add_head_dropout, add_student_noise
from ssdet.modeling.pseudo_targets import PSEUDO_CLS_TARGETS, score_weighted_classification

__all__ = [
    "PSEUDO_CLS_TARGETS",
    "DropPath",
    "SsdetFCOS",
    "JointClassificationHead",
    "JointRetinaNet",
    "add_drop_path",
    "add_head_dropout",
    "add_student_noise",
    "build_resnet_any_width_backbone",
    "build_retinanet_resnet_any_width_fpn_backbone",
    "build_ssdet_resnet_backbone",
    "build_ssdet_retinanet_resnet_fpn_backbone",
    "detector_state_dict",
    "score_weighted_classification",
]
