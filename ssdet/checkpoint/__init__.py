"""Checkpoints: ssdet's checkpointer (safe loading, atomic saving), its backbone format and its
conversion, backbone inits, and the stock-Detectron2 config written beside final weights."""

from ssdet.checkpoint.checkpointer import (
    FINAL_CHECKPOINT,
    SsdetCheckpointer,
    SsdetCheckpointerMixin,
    fetch_checkpoint,
    is_loadable_checkpoint,
    load_checkpoint_file,
    load_torch_file,
    load_weights_pickle,
)
from ssdet.checkpoint.convert import (
    Conversion,
    convert_checkpoint,
    file_sha256,
    torchvision_to_detectron2_key,
)
from ssdet.checkpoint.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METHODS,
    check_backbone_state_dict,
    infer_arch,
    load_backbone_checkpoint,
    save_backbone_checkpoint,
)
from ssdet.checkpoint.stock_config import STOCK_CONFIG, stock_config, write_stock_config

__all__ = [
    "FINAL_CHECKPOINT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METHODS",
    "STOCK_CONFIG",
    "Conversion",
    "SsdetCheckpointer",
    "SsdetCheckpointerMixin",
    "check_backbone_state_dict",
    "convert_checkpoint",
    "fetch_checkpoint",
    "file_sha256",
    "infer_arch",
    "is_loadable_checkpoint",
    "load_backbone_checkpoint",
    "load_checkpoint_file",
    "load_torch_file",
    "load_weights_pickle",
    "save_backbone_checkpoint",
    "stock_config",
    "torchvision_to_detectron2_key",
    "write_stock_config",
]
