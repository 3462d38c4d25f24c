"""Pre-training the detector's ResNet on an ImageNet-layout folder: supervised or SimCLR.

``tools/pretrain.py`` runs :class:`PretrainTrainer`; its output ``backbone_final.pth`` is the
backbone checkpoint that ``SSDET.INIT`` (IMAGENET or SIMCLR) and the converter accept.
"""

from ssdet.pretrain.data import (
    PretrainMapper,
    PretrainSplits,
    build_pretrain_test_loader,
    build_pretrain_train_loader,
    build_test_transform,
    build_train_transform,
    load_pretrain_splits,
)
from ssdet.pretrain.engine import (
    BACKBONE_FILE,
    METRICS_FILE,
    PRETRAIN_METHODS,
    PretrainMethod,
    PretrainTrainer,
    get_pretrain_method,
    save_pretrained_backbone,
    write_pretrain_metrics,
)
from ssdet.pretrain.evaluation import (
    ClassificationEvaluator,
    extract_features,
    fit_linear_probe,
    linear_probe_top1,
)
from ssdet.pretrain.losses import nt_xent_loss
from ssdet.pretrain.modeling import (
    PretrainModel,
    SimCLR,
    SupervisedClassifier,
    build_pretrain_backbone,
)

__all__ = [
    "BACKBONE_FILE",
    "METRICS_FILE",
    "PRETRAIN_METHODS",
    "ClassificationEvaluator",
    "PretrainMapper",
    "PretrainMethod",
    "PretrainModel",
    "PretrainSplits",
    "PretrainTrainer",
    "SimCLR",
    "SupervisedClassifier",
    "build_pretrain_backbone",
    "build_pretrain_test_loader",
    "build_pretrain_train_loader",
    "build_test_transform",
    "build_train_transform",
    "extract_features",
    "fit_linear_probe",
    "get_pretrain_method",
    "linear_probe_top1",
    "load_pretrain_splits",
    "nt_xent_loss",
    "save_pretrained_backbone",
    "write_pretrain_metrics",
]
