"""ssdet's backbone checkpoint format, and converters of other ResNet checkpoints into it.

The format ("ssdet-backbone", version 1) is a ``torch.save`` of a dict of plain types and tensors,
so it loads with ``torch.load(..., weights_only=True)``::

    {
        "format": "ssdet-backbone",
        "version": 1,
        "arch": {"depth": 50, "stem_out_channels": 64, "res2_out_channels": 256},
        "method": "supervised" | "simclr" | "converted",
        "model": {key: tensor},  # Detectron2 ResNet state_dict keys, e.g. "res2.0.conv1.weight"
        "extra": {...},  # optional provenance (plain types), see below
    }

``model`` holds the state dict of the bottom-up ResNet that ``build_ssdet_resnet_backbone``
(Detectron2's ``ResNet``) builds for ``arch`` -- ``stem.conv1.weight``,
``stem.conv1.norm.{weight,bias,running_mean,running_var}``, ``res2.0.conv1.weight``,
``res2.0.shortcut.weight``, ... -- without a classifier and without BatchNorm's
``num_batches_tracked`` step counters (Detectron2's BN uses a fixed momentum, so they are unused).
Norm running statistics may be absent (a GroupNorm backbone has none); every parameter is there.
``SSDET.INIT`` loads ``model`` into the detector's bottom-up ResNet
(ssdet/checkpoint/backbone_init.py).

Optional ``extra`` keys that the init checks against the detector's config when present:
``input_format`` ("BGR" or "RGB": the channel order the stem expects, to match ``INPUT.FORMAT``)
and ``stride_in_1x1`` (bool, bottleneck depths: to match ``MODEL.RESNETS.STRIDE_IN_1X1``).
"""

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from ssdet.checkpoint.checkpointer import load_torch_file
from ssdet.modeling.any_width_resnet import BLOCKS_PER_STAGE
from ssdet.modeling.backbone import build_ssdet_resnet_backbone
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open

__all__ = [
    "ARCH_KEYS",
    "BLOCKS_PER_STAGE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INPUT_FORMATS",
    "METHODS",
    "arch_name",
    "check_arch",
    "check_backbone_state_dict",
    "infer_arch",
    "load_backbone_checkpoint",
    "load_torch_checkpoint",
    "save_backbone_checkpoint",
    "some_keys",
    "validate_checkpoint",
]

FORMAT_NAME = "ssdet-backbone"
FORMAT_VERSION = 1
# How the weights were obtained: ssdet's tools/pretrain.py methods, or tools/convert_pretrained.py.
METHODS = ("supervised", "simclr", "converted")
ARCH_KEYS = ("depth", "stem_out_channels", "res2_out_channels")
INPUT_FORMATS = ("BGR", "RGB")


def _shape(shape: torch.Size | tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def some_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def arch_name(arch: Mapping[str, int]) -> str:
    return (
        f"ResNet-{arch['depth']} with {arch['stem_out_channels']} stem and "
        f"{arch['res2_out_channels']} res2 channels"
    )


def check_arch(arch: Any, source: str) -> dict[str, int]:
    if not isinstance(arch, Mapping) or set(arch) != set(ARCH_KEYS):
        raise InputError(f"{source}: 'arch' must be a dict with exactly the keys {ARCH_KEYS}.")
    arch = dict(arch)
    for key in ARCH_KEYS:
        if not isinstance(arch[key], int) or isinstance(arch[key], bool) or arch[key] <= 0:
            raise InputError(f"{source}: arch[{key!r}] must be a positive int, got {arch[key]!r}.")
    if arch["depth"] not in BLOCKS_PER_STAGE:
        raise InputError(
            f"{source}: ResNet depth {arch['depth']} is not one of {sorted(BLOCKS_PER_STAGE)}."
        )
    return arch


def _bottleneck_groups(model: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(NUM_GROUPS, WIDTH_PER_GROUP) of a bottleneck ResNet's state dict (ResNeXt, wide nets)."""
    conv1, conv2 = model.get("res2.0.conv1.weight"), model.get("res2.0.conv2.weight")
    if conv1 is None or conv2 is None or conv2.dim() != 4 or conv2.shape[1] == 0:
        return 1, 64
    bottleneck_channels = conv1.shape[0]
    num_groups = max(bottleneck_channels // conv2.shape[1], 1)
    return num_groups, bottleneck_channels // num_groups


def _expected_tensors(
    arch: Mapping[str, int], num_groups: int = 1, width_per_group: int = 64
) -> tuple[dict[str, torch.Size], set[str]]:
    """Shapes of every tensor of ssdet's ResNet for ``arch``, and which of them are parameters.

    The network is built on the meta device (no memory, no init cost) by the detector's own
    builder, so the expected keys are exactly what the detector will have.
    """
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = arch["depth"]
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = arch["stem_out_channels"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = arch["res2_out_channels"]
    cfg.MODEL.RESNETS.NUM_GROUPS = num_groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width_per_group
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    with torch.device("meta"):
        net = build_ssdet_resnet_backbone(cfg, ShapeSpec(channels=3))
    shapes = {
        k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    return shapes, {k for k, _ in net.named_parameters()}


def check_backbone_state_dict(
    model: Mapping[str, torch.Tensor], arch: Mapping[str, int], source: str
) -> list[str]:
    """Check that ``model`` is a state dict of ssdet's ResNet for ``arch``.

    Args:
        model: Detectron2 ResNet keys -> tensors (``num_batches_tracked`` not allowed).
        arch: ``{"depth", "stem_out_channels", "res2_out_channels"}``.
        source: names the checkpoint in error messages.

    Returns:
        The expected norm statistics (buffers) that ``model`` lacks, e.g. for a GroupNorm net.

    Raises:
        InputError: a tensor's shape differs (the message names the key and both shapes), a
            parameter is missing, or a key is not part of the ResNet.
    """
    arch = check_arch(arch, source)
    for key, value in model.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor.")
    num_groups, width_per_group = _bottleneck_groups(model) if arch["depth"] >= 50 else (1, 64)
    expected, params = _expected_tensors(arch, num_groups, width_per_group)
    for key, shape in expected.items():
        if key in model and model[key].shape != shape:
            raise InputError(
                f"{source}: {key} has shape {_shape(model[key].shape)} in the checkpoint but "
                f"{_shape(shape)} in a {arch_name(arch)}; the checkpoint does not fit "
                "this architecture."
            )
    missing_params = [k for k in expected if k in params and k not in model]
    if missing_params:
        raise InputError(
            f"{source}: parameters of a {arch_name(arch)} are missing from the checkpoint: "
            f"{some_keys(missing_params)}."
        )
    unexpected = sorted(set(model) - set(expected))
    if unexpected:
        raise InputError(
            f"{source}: keys that are not part of a {arch_name(arch)}: {some_keys(unexpected)}."
        )
    return [k for k in expected if k not in model]


def _check_extra(extra: Any, source: str) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise InputError(f"{source}: 'extra' must be a dict, got {type(extra).__name__}.")
    try:
        # weights_only loading accepts plain containers and scalars: what JSON can hold.
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise InputError(f"{source}: 'extra' must hold plain types only ({e}).") from e
    if extra.get("input_format") not in (None, *INPUT_FORMATS):
        raise InputError(f"{source}: extra['input_format'] must be one of {INPUT_FORMATS}.")
    return dict(extra)


def save_backbone_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    arch: Mapping[str, int],
    method: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a backbone checkpoint in ssdet's format (atomically), after validating it.

    Args:
        path: the output file (``.pth``); its directory is created if missing.
        state_dict: the bottom-up ResNet's own ``state_dict()`` (keys ``stem.conv1.weight``,
            ``res2.0.conv1.weight``, ...; no classifier). ``num_batches_tracked`` entries are
            dropped; tensors are copied to the CPU.
        arch: ``{"depth": int, "stem_out_channels": int, "res2_out_channels": int}``, i.e.
            ``MODEL.RESNETS.{DEPTH, STEM_OUT_CHANNELS, RES2_OUT_CHANNELS}``.
        method: one of :data:`METHODS`.
        extra: optional provenance of plain types (str, numbers, lists, dicts); the keys
            ``input_format`` ("BGR"/"RGB") and ``stride_in_1x1`` (bool) are checked against the
            detector's config by ``SSDET.INIT``.

    Raises:
        InputError: ``state_dict`` does not fit ``arch``, or bad ``method`` / ``extra``.
    """
    source = f"backbone checkpoint {os.fspath(path)!r}"
    if method not in METHODS:
        raise InputError(f"{source}: method must be one of {METHODS}, got {method!r}.")
    arch = check_arch(arch, source)
    model = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")
    }
    check_backbone_state_dict(model, arch, source)
    checkpoint = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "arch": arch,
        "method": method,
        "model": model,
        "extra": _check_extra(extra, source),
    }
    with atomic_open(path, "wb") as f:
        torch.save(checkpoint, f)


def load_torch_checkpoint(path: str, trust_pickle: bool = False) -> Any:
    """:func:`load_torch_file`, pointing at tools/convert_pretrained.py's ``--trust-pickle``."""
    hint = (
        ""
        if trust_pickle
        else " If it is a checkpoint you trust that pickles Python objects (training "
        "arguments, optimizer classes), convert it with --trust-pickle."
    )
    return load_torch_file(path, trust_pickle, hint)


def validate_checkpoint(obj: Any, source: str) -> tuple[dict[str, Any], list[str]]:
    """The checkpoint dict of ssdet's format (``extra`` filled in) and its missing buffers."""
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT_NAME:
        raise InputError(
            f"{source} is not an ssdet backbone checkpoint (no 'format': {FORMAT_NAME!r}). "
            "Convert it with tools/convert_pretrained.py --input IN --output OUT.pth."
        )
    if obj.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{source} has format version {obj.get('version')!r}; this ssdet reads version "
            f"{FORMAT_VERSION}."
        )
    if obj.get("method") not in METHODS:
        raise InputError(f"{source}: method must be one of {METHODS}, got {obj.get('method')!r}.")
    model = obj.get("model")
    if not isinstance(model, Mapping) or not model:
        raise InputError(f"{source}: 'model' must be a non-empty dict of tensors.")
    # Tolerated on reading, as in a raw ResNet state dict; never written.
    model = {k: v for k, v in model.items() if not k.endswith("num_batches_tracked")}
    arch = check_arch(obj.get("arch"), source)
    missing = check_backbone_state_dict(model, arch, source)
    checkpoint = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "arch": arch,
        "method": obj["method"],
        "model": model,
        "extra": _check_extra(obj.get("extra"), source),
    }
    return checkpoint, missing


def load_backbone_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a backbone checkpoint in ssdet's format (``weights_only`` loading).

    Args:
        path: a file written by :func:`save_backbone_checkpoint`.

    Returns:
        ``{"format", "version", "arch", "method", "model", "extra"}`` (``extra`` is ``{}`` when
        the file has none), tensors on the CPU.

    Raises:
        InputError: the file is missing, unreadable, not in the format, or inconsistent.
    """
    path = os.fspath(path)
    checkpoint, _ = validate_checkpoint(load_torch_checkpoint(path), f"Checkpoint {path!r}")
    return checkpoint


def infer_arch(model: Mapping[str, torch.Tensor], source: str) -> dict[str, int]:
    """The ``arch`` of a Detectron2-named ResNet state dict, from its keys and tensor shapes.

    Args:
        model: Detectron2 ResNet keys -> tensors.
        source: names the checkpoint in error messages.

    Raises:
        InputError: no ResNet stem, or a stage layout that is no standard ResNet depth.
    """
    stem = model.get("stem.conv1.weight")
    if stem is None or stem.dim() != 4:
        raise InputError(
            f"{source} has no ResNet stem convolution (torchvision 'conv1.weight'): it is not "
            "a ResNet checkpoint, or its ResNet is under an unknown prefix."
        )
    blocks = []
    for stage in range(2, 6):
        indices = {int(m[1]) for k in model if (m := re.match(rf"res{stage}\.(\d+)\.", k))}
        blocks.append(len(indices))
    block_type = "bottleneck" if "res2.0.conv3.weight" in model else "basic"
    depths = [d for d, layout in BLOCKS_PER_STAGE.items() if layout == (block_type, tuple(blocks))]
    if not depths:
        raise InputError(
            f"{source}: {block_type} blocks per stage {blocks} are no standard ResNet "
            f"(known: {', '.join(f'{d}: {b}' for d, (_, b) in BLOCKS_PER_STAGE.items())})."
        )
    res2_last_conv = "res2.0.conv3.weight" if block_type == "bottleneck" else "res2.0.conv2.weight"
    if res2_last_conv not in model:
        raise InputError(f"{source}: {res2_last_conv} is missing.")
    return {
        "depth": depths[0],
        "stem_out_channels": int(stem.shape[0]),
        "res2_out_channels": int(model[res2_last_conv].shape[0]),
    }
