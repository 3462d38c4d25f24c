"""Backbone initialization of a detector that starts training: the paper's pre-training arms.

``SSDET.INIT`` picks it: ``RAND`` (Rand Init, Detectron2's random initialization: training
from scratch), ``IMAGENET`` (supervised pre-training) or ``SIMCLR`` (self-supervised SimCLR),
the last two read from ``SSDET.INIT_WEIGHTS``, a backbone checkpoint in ssdet's format
(:mod:`ssdet.checkpoint.convert`: tools/convert_pretrained.py or tools/pretrain.py output),
into the detector's bottom-up ResNet (``backbone.bottom_up.*``).

Precedence, when the trainer's ``resume_or_load`` runs:

1. ``--resume`` of a run whose ``OUTPUT_DIR`` has a checkpoint: the checkpoint, nothing else
   (the init was applied, and recorded, when that run started).
2. Otherwise ``SSDET.INIT`` is applied, then Detectron2 loads ``MODEL.WEIGHTS`` if set. Both
   would set the backbone, so ``MODEL.WEIGHTS`` (e.g. a whole detector checkpoint) requires
   ``SSDET.INIT RAND``: a config asking for both is refused rather than one silently winning.

Every fresh start records its init in ``OUTPUT_DIR/init.json``; ``final_metrics.json`` has
``init`` and ``init_weights`` from the config.
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.modeling import ResNet
from detectron2.utils import comm
from torch import nn

from ssdet.checkpoint.format import load_backbone_checkpoint
from ssdet.modeling import backbone as backbones
from ssdet.utils.ddp import unwrap_model
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_write_json, file_sha256
from ssdet.utils.run_dir import INIT_RECORD_FILE

__all__ = [
    "INIT_NAMES",
    "INIT_RECORD_FILE",
    "apply_backbone_init",
    "bottom_up_resnet",
    "check_init_config",
    "init_backbone",
    "load_resnet_state_dict",
]

logger = logging.getLogger(__name__)

INIT_NAMES = ("RAND", "IMAGENET", "SIMCLR")
# Checkpoint methods each pre-trained init accepts; "converted" weights have no known method.
_INIT_METHODS = {"IMAGENET": ("supervised", "converted"), "SIMCLR": ("simclr", "converted")}


def check_init_config(cfg: CfgNode) -> None:
    """Refuse inconsistent ``SSDET.INIT`` / ``SSDET.INIT_WEIGHTS`` / ``MODEL.WEIGHTS``.

    Raises:
        InputError: unknown init name, weights missing for a pre-trained init or given for
            RAND, or both ``SSDET.INIT`` and ``MODEL.WEIGHTS`` initializing the model.
    """
    name, weights = cfg.SSDET.INIT, cfg.SSDET.INIT_WEIGHTS
    if name not in INIT_NAMES:
        raise InputError(f"Unknown SSDET.INIT {name!r}; use one of {', '.join(INIT_NAMES)}.")
    if name == "RAND" and weights:
        raise InputError(
            f"SSDET.INIT_WEIGHTS is {weights!r} but SSDET.INIT is RAND (from scratch): set "
            "SSDET.INIT IMAGENET or SIMCLR to use the weights, or SSDET.INIT_WEIGHTS ''."
        )
    if name != "RAND" and not weights:
        raise InputError(
            f"SSDET.INIT {name} needs SSDET.INIT_WEIGHTS: a backbone checkpoint written by "
            "tools/convert_pretrained.py or tools/pretrain.py."
        )
    if name != "RAND" and cfg.MODEL.WEIGHTS:
        raise InputError(
            f"SSDET.INIT {name} and MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} both initialize the "
            "model: set MODEL.WEIGHTS '' to start from the backbone init, or SSDET.INIT RAND "
            "(and SSDET.INIT_WEIGHTS '') to start from MODEL.WEIGHTS."
        )


def bottom_up_resnet(model: nn.Module) -> ResNet:
    """The detector's bottom-up ResNet: ``model.backbone.bottom_up`` (FPN) or ``model.backbone``.

    Args:
        model: a Detectron2 meta-architecture, possibly wrapped in (Distributed)DataParallel.
    """
    return backbones.bottom_up_resnet(getattr(unwrap_model(model), "backbone", None), "SSDET.INIT")


def load_resnet_state_dict(
    resnet: ResNet, state_dict: Mapping[str, torch.Tensor], source: str
) -> dict[str, list[str]]:
    """Copy a ResNet state dict (ssdet's backbone format) into a Detectron2 ResNet.

    Args:
        resnet: the target, e.g. ``model.backbone.bottom_up``.
        state_dict: Detectron2 ResNet keys -> tensors.
        source: names the checkpoint in messages.

    Returns:
        ``{"matched": keys loaded, "missing": target keys the checkpoint lacks (norm statistics
        only), "unused": checkpoint keys the target lacks}``; ``num_batches_tracked`` is
        ignored on both sides.

    Raises:
        InputError: a shape differs (the message names the key and both shapes), or a
            parameter of the target is missing from the checkpoint.
    """
    target = {k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    params = {k for k, _ in resnet.named_parameters()}
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    for key, value in target.items():
        if key in state_dict and state_dict[key].shape != value.shape:
            raise InputError(
                f"{source}: backbone key {key} has shape {tuple(state_dict[key].shape)} in the "
                f"checkpoint but {tuple(value.shape)} in the detector; the checkpoint's ResNet "
                "does not match MODEL.RESNETS."
            )
    matched = [k for k in target if k in state_dict]
    missing = [k for k in target if k not in state_dict]
    missing_params = [k for k in missing if k in params]
    if missing_params:
        raise InputError(
            f"{source}: the detector's backbone parameters {', '.join(missing_params[:8])}"
            f"{' ...' if len(missing_params) > 8 else ''} ({len(missing_params)} in all) are "
            "not in the checkpoint (e.g. MODEL.RESNETS.NORM '' adds conv biases): the "
            "checkpoint does not fit MODEL.RESNETS."
        )
    unused = sorted(set(state_dict) - set(target))
    # Not strict: the missing keys are norm statistics, reported above and kept as they are.
    resnet.load_state_dict({k: state_dict[k] for k in matched}, strict=False)
    return {"matched": matched, "missing": missing, "unused": unused}


def _check_checkpoint_fits(cfg: CfgNode, checkpoint: Mapping[str, Any], source: str) -> None:
    name = cfg.SSDET.INIT
    if checkpoint["method"] not in _INIT_METHODS[name]:
        raise InputError(
            f"{source} was pre-trained with method {checkpoint['method']!r}, which is not "
            f"SSDET.INIT {name}: set SSDET.INIT "
            f"{'SIMCLR' if checkpoint['method'] == 'simclr' else 'IMAGENET'}."
        )
    resnets = cfg.MODEL.RESNETS
    wanted = {
        "depth": resnets.DEPTH,
        "stem_out_channels": resnets.STEM_OUT_CHANNELS,
        "res2_out_channels": resnets.RES2_OUT_CHANNELS,
    }
    if checkpoint["arch"] != wanted:
        raise InputError(
            f"{source} holds a ResNet with {checkpoint['arch']}, but the detector's is "
            f"MODEL.RESNETS.DEPTH {wanted['depth']}, STEM_OUT_CHANNELS "
            f"{wanted['stem_out_channels']}, RES2_OUT_CHANNELS {wanted['res2_out_channels']}: "
            "pre-train or convert a matching backbone, or change MODEL.RESNETS."
        )
    extra = checkpoint["extra"]
    input_format = extra.get("input_format")
    if input_format in ("BGR", "RGB") and cfg.INPUT.FORMAT in ("BGR", "RGB"):
        if input_format != cfg.INPUT.FORMAT:
            raise InputError(
                f"{source} expects {input_format} images but INPUT.FORMAT is "
                f"{cfg.INPUT.FORMAT}: convert it again with tools/convert_pretrained.py "
                f"--input-format {cfg.INPUT.FORMAT}, or set INPUT.FORMAT {input_format} (and "
                "PIXEL_MEAN / PIXEL_STD in that order)."
            )
    stride_in_1x1 = extra.get("stride_in_1x1")
    if resnets.DEPTH >= 50 and stride_in_1x1 is not None and stride_in_1x1 != resnets.STRIDE_IN_1X1:
        raise InputError(
            f"{source} was trained with the stride in the bottleneck's "
            f"{'1x1' if stride_in_1x1 else '3x3'} conv: set MODEL.RESNETS.STRIDE_IN_1X1 "
            f"{stride_in_1x1}."
        )


def _warn_if_not_from_scratch_ready(cfg: CfgNode) -> None:
    """Rand Init needs normalization that trains, and no frozen (random) stages."""
    if cfg.MODEL.RESNETS.NORM == "FrozenBN":
        logger.warning(
            "SSDET.INIT RAND with MODEL.RESNETS.NORM FrozenBN: the random backbone has no "
            "trainable normalization, which training from scratch needs (use BN, SyncBN or GN)."
        )
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        logger.warning(
            "SSDET.INIT RAND with MODEL.BACKBONE.FREEZE_AT %s: the first backbone stages stay "
            "random; use FREEZE_AT 0 to train from scratch.",
            cfg.MODEL.BACKBONE.FREEZE_AT,
        )


def init_backbone(model: nn.Module, cfg: CfgNode) -> dict[str, Any]:
    """Apply ``SSDET.INIT`` to a freshly built detector and describe what was done.

    Args:
        model: the detector (possibly DDP-wrapped); its bottom-up ResNet is changed in place.
        cfg: the run's config.

    Returns:
        The init record: ``init``, ``weights`` (absolute path or ""), ``weights_sha256``,
        ``method``, ``arch`` and ``extra`` of the checkpoint, ``matched_keys`` (count),
        ``missing_keys`` / ``unused_keys`` (lists), ``model_weights`` (``MODEL.WEIGHTS``).

    Raises:
        InputError: inconsistent config, or a checkpoint that is unreadable or does not fit.
    """
    check_init_config(cfg)
    name = cfg.SSDET.INIT
    record: dict[str, Any] = {
        "init": name,
        "weights": "",
        "weights_sha256": None,
        "method": None,
        "arch": None,
        "extra": None,
        "matched_keys": 0,
        "missing_keys": [],
        "unused_keys": [],
        "model_weights": cfg.MODEL.WEIGHTS,
    }
    if name == "RAND":
        if not cfg.MODEL.WEIGHTS:
            _warn_if_not_from_scratch_ready(cfg)
        logger.info("SSDET.INIT RAND: the backbone keeps Detectron2's random initialization.")
        return record

    path = os.path.abspath(cfg.SSDET.INIT_WEIGHTS)
    source = f"SSDET.INIT_WEIGHTS {cfg.SSDET.INIT_WEIGHTS!r}"
    checkpoint = load_backbone_checkpoint(path)
    _check_checkpoint_fits(cfg, checkpoint, source)
    keys = load_resnet_state_dict(bottom_up_resnet(model), checkpoint["model"], source)
    logger.info(
        "SSDET.INIT %s: loaded %s backbone tensors from %s (method %s).",
        name,
        len(keys["matched"]),
        path,
        checkpoint["method"],
    )
    if keys["missing"]:
        logger.warning(
            "SSDET.INIT %s: not in the checkpoint, left at their initial values: %s",
            name,
            ", ".join(keys["missing"]),
        )
    if keys["unused"]:
        logger.warning(
            "SSDET.INIT %s: checkpoint tensors the detector's backbone does not have (unused): %s",
            name,
            ", ".join(keys["unused"]),
        )
    record.update(
        weights=path,
        weights_sha256=file_sha256(path),
        method=checkpoint["method"],
        arch=checkpoint["arch"],
        extra=checkpoint["extra"],
        matched_keys=len(keys["matched"]),
        missing_keys=keys["missing"],
        unused_keys=keys["unused"],
    )
    return record


def apply_backbone_init(model: nn.Module, cfg: CfgNode) -> dict[str, Any]:
    """:func:`init_backbone`, then write the record to ``OUTPUT_DIR/init.json`` (main process).

    Called by :meth:`ssdet.engine.Trainer.resume_or_load` when a run starts fresh.

    Returns:
        The init record (see :func:`init_backbone`).
    """
    record = init_backbone(model, cfg)
    if comm.is_main_process():
        atomic_write_json(os.path.join(cfg.OUTPUT_DIR, INIT_RECORD_FILE), record)
    return record
