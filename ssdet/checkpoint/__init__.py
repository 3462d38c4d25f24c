"""Backbone checkpoints: ssdet's converted ResNet format and the converters into it."""

from ssdet.checkpoint.convert import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METHODS,
    Conversion,
    check_backbone_state_dict,
    convert_checkpoint,
    file_sha256,
    infer_arch,
    load_backbone_checkpoint,
    save_backbone_checkpoint,
    torchvision_to_detectron2_key,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METHODS",
    "Conversion",
    "check_backbone_state_dict",
    "convert_checkpoint",
    "file_sha256",
    "infer_arch",
    "load_backbone_checkpoint",
    "save_backbone_checkpoint",
    "torchvision_to_detectron2_key",
]
