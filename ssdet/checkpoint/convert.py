"""Converters of other ResNet checkpoints into ssdet's backbone format
(:mod:`ssdet.checkpoint.format`).

:func:`convert_checkpoint` maps torchvision ResNets, common SimCLR-style checkpoints and ssdet's
own files into the format through an explicit key table (:func:`torchvision_to_detectron2_key`),
the renaming of Detectron2's ``tools/convert-torchvision-to-d2.py`` written as exact rules: every
source key is converted, dropped for a named reason, or reported as unmatched, never matched by
similarity as Detectron2's ``align_and_update_state_dicts`` does for MODEL.WEIGHTS. Checkpoints in
Detectron2's naming (``.pkl`` files as that script writes them, a Detectron2 detector's
``backbone.bottom_up.``) keep their keys. ``.pkl`` files are read by ssdet's restricted unpickler
(:func:`~ssdet.checkpoint.load_weights_pickle`), which runs nothing a file names.
"""

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ssdet.checkpoint.checkpointer import load_weights_pickle
from ssdet.checkpoint.format import (
    FORMAT_NAME,
    INPUT_FORMATS,
    METHODS,
    arch_name,
    check_arch,
    check_backbone_state_dict,
    infer_arch,
    load_torch_checkpoint,
    some_keys,
    validate_checkpoint,
)
from ssdet.utils.errors import InputError
from ssdet.utils.io import file_sha256

__all__ = [
    "SOURCE_FORMATS",
    "Conversion",
    "convert_checkpoint",
    "file_sha256",
    "torchvision_to_detectron2_key",
]

SOURCE_FORMATS = ("auto", "torchvision", "simclr", "detectron2", "ssdet")
# Prefixes under which SimCLR-style checkpoints keep their ResNet, tried in this order; "" and
# "module." (DataParallel) are plain torchvision state dicts.
_TORCHVISION_PREFIXES = ("", "module.")
_SIMCLR_PREFIXES = (
    "module.encoder_q.",
    "module.encoder.",
    "module.backbone.",
    "module.convnet.",
    "encoder_q.",
    "encoder.",
    "backbone.",
    "convnet.",
)
# Source keys that are not the backbone, by prefix (after "module."), with the reason they go.
_DROPPED_PREFIXES = {
    "fc.": "classifier or projection head (fc)",
    "projector.": "projection head",
    "projection_head.": "projection head",
    "projection.": "projection head",
    "g.": "projection head",
    "head.": "projection head",
    "classifier.": "classifier head",
    "predictor.": "prediction head",
    "prediction_head.": "prediction head",
    "encoder_k.": "MoCo momentum encoder",
    "momentum_encoder.": "momentum encoder",
    "momentum_backbone.": "momentum encoder",
}
_DROPPED_KEYS = {"queue": "MoCo queue", "queue_ptr": "MoCo queue"}
# Containers that training scripts wrap the state dict in, looked up in this order ("blobs":
# Caffe2's .pkl files).
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "blobs")
# torchvision's ResNet children when the network was saved as nn.Sequential(*children): index
# -> name (2 relu, 3 maxpool and 8 avgpool have no weights).
_SEQUENTIAL_CHILDREN = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}
_NORM_FIELD = r"(weight|bias|running_mean|running_var)"
# Where Detectron2-named checkpoints keep their ResNet, tried in this order: a bare ResNet (the
# .pkl files of Detectron2's tools/convert-torchvision-to-d2.py), a detector's FPN bottom-up, a
# detector's plain ResNet backbone.
_DETECTRON2_PREFIXES = ("", "backbone.bottom_up.", "backbone.")
_DETECTRON2_RESNET_KEY = re.compile(
    rf"(stem\.conv1|res[2-5]\.\d+\.(conv[1-3]|shortcut))\.(weight|norm\.{_NORM_FIELD})"
)
# Beside the weights in Detectron2's .pkl files.
_DETECTRON2_METADATA = ("__author__", "matching_heuristics")


def torchvision_to_detectron2_key(key: str) -> str | None:
    """The Detectron2 ResNet key of a torchvision ResNet key, or None if it is not one.

    ``conv1`` / ``bn1`` -> ``stem.conv1`` / ``stem.conv1.norm``; ``layer{i}.{j}.conv{k}`` ->
    ``res{i+1}.{j}.conv{k}``; ``layer{i}.{j}.bn{k}`` -> ``res{i+1}.{j}.conv{k}.norm``;
    ``layer{i}.{j}.downsample.0`` / ``.1`` -> ``res{i+1}.{j}.shortcut`` / ``.shortcut.norm``.
    ``fc`` and ``num_batches_tracked`` have no counterpart (None).

    Args:
        key: a key of ``torchvision.models.resnet*().state_dict()``.
    """
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if m := re.fullmatch(rf"bn1\.{_NORM_FIELD}", key):
        return f"stem.conv1.norm.{m[1]}"
    m = re.fullmatch(r"layer([1-4])\.(\d+)\.(.+)", key)
    if m is None:
        return None
    block = f"res{int(m[1]) + 1}.{m[2]}"
    rest = m[3]
    if m := re.fullmatch(r"conv([1-3])\.weight", rest):
        return f"{block}.conv{m[1]}.weight"
    if m := re.fullmatch(rf"bn([1-3])\.{_NORM_FIELD}", rest):
        return f"{block}.conv{m[1]}.norm.{m[2]}"
    if rest == "downsample.0.weight":
        return f"{block}.shortcut.weight"
    if m := re.fullmatch(rf"downsample\.1\.{_NORM_FIELD}", rest):
        return f"{block}.shortcut.norm.{m[1]}"
    return None


def _arrays_to_tensors(obj: Any) -> Any:
    """``obj`` with the numeric numpy arrays in its dicts as tensors (a .pkl holds arrays)."""
    if isinstance(obj, Mapping):
        return {k: _arrays_to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        # A copy: unpickled arrays may be read-only, which torch.from_numpy warns about.
        return torch.from_numpy(np.array(obj))
    return obj


def _load_source(path: str, trust_pickle: bool) -> Any:
    """A source checkpoint: ``.pkl`` files (Detectron2's model-zoo format) by the restricted
    unpickler, never ``pickle.load``, their arrays as tensors; other files by ``torch.load``."""
    if path.endswith(".pkl"):
        return _arrays_to_tensors(load_weights_pickle(path))
    return load_torch_checkpoint(path, trust_pickle)


@dataclass
class Conversion:
    """The result of :func:`convert_checkpoint`: a checkpoint in ssdet's format and its report.

    Attributes:
        arch, method, model, extra: the arguments of :func:`save_backbone_checkpoint`.
        source_format: "torchvision", "simclr", "detectron2" or "ssdet".
        prefix: the prefix of the backbone's keys in the source ("" for none).
        converted: source key -> Detectron2 key, for every tensor kept.
        dropped: source key -> why it was left out (heads, BN step counters, ...).
        unmatched: source keys with no counterpart in the ResNet, left out (only with
            ``allow_unmatched``; otherwise they are an error).
        missing: ResNet keys the source lacks (norm statistics only; missing parameters are an
            error). Detectron2 keeps their initial values (mean 0, variance 1).
    """

    arch: dict[str, int]
    method: str
    model: dict[str, torch.Tensor]
    extra: dict[str, Any]
    source_format: str
    prefix: str = ""
    converted: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines: what was converted, dropped, unmatched and missing."""
        order = self.extra.get("input_format", "unknown")
        source_order = self.extra.get("source_input_format", order)
        if source_order != order:
            order += f" (the source's {source_order}, stem flipped)"
        lines = [
            f"source format: {self.source_format}"
            + (f", backbone prefix {self.prefix!r}" if self.prefix else ""),
            f"architecture: {arch_name(self.arch)}; method: {self.method}; "
            f"input channel order: {order}",
            f"converted: {len(self.converted)} tensors",
        ]
        by_reason: dict[str, list[str]] = {}
        for key, reason in self.dropped.items():
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            lines.append(f"dropped ({reason}): {some_keys(keys, 6)}")
        if self.unmatched:
            lines.append(f"unmatched source keys (left out): {some_keys(self.unmatched)}")
        if self.missing:
            lines.append(
                f"missing from the source (kept at mean 0 / variance 1): {some_keys(self.missing)}"
            )
        return "\n".join(lines)


def _find_state_dict(obj: Any, source: str) -> tuple[dict[str, Any], str]:
    """The state dict inside a loaded checkpoint, and the container key it was under."""

    def is_state_dict(d: Any) -> bool:
        return (
            isinstance(d, Mapping)
            and bool(d)
            and all(isinstance(k, str) for k in d)
            and any(isinstance(v, torch.Tensor) for v in d.values())
        )

    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if is_state_dict(obj.get(key)):
                return dict(obj[key]), key
        if is_state_dict(obj):
            return dict(obj), ""
    raise InputError(
        f"{source} holds no state dict: expected a dict of tensors, or one under "
        f"{', '.join(repr(k) for k in _CONTAINER_KEYS)}."
    )


def _backbone_prefix(
    state: Mapping[str, Any], prefixes: tuple[str, ...]
) -> tuple[str, bool] | None:
    """The first prefix under which ``state`` has a ResNet stem, and whether the ResNet is saved
    as ``nn.Sequential`` of its children; None if there is none."""
    for prefix in prefixes:
        if prefix + "conv1.weight" in state:
            return prefix, False
        if prefix + "0.weight" in state and prefix + "4.0.conv1.weight" in state:
            return prefix, True
    return None


def _source_key_to_torchvision(key: str, sequential: bool) -> str:
    if not sequential:
        return key
    head, _, rest = key.partition(".")
    return f"{_SEQUENTIAL_CHILDREN[head]}.{rest}" if head in _SEQUENTIAL_CHILDREN else key


def _prefix_list(prefixes: tuple[str, ...]) -> str:
    return ", ".join(repr(p) for p in prefixes)


def _check_unmatched(unmatched: list[str], allow_unmatched: bool, source: str) -> None:
    if unmatched and not allow_unmatched:
        raise InputError(
            f"{source}: keys with no counterpart in a Detectron2 ResNet: {some_keys(unmatched)}. "
            "Pass --allow-unmatched to leave them out, if they are not part of the backbone."
        )


def _drop_reason(key: str) -> str | None:
    key = key.removeprefix("module.")
    if key.endswith("num_batches_tracked"):
        return "BatchNorm step counter, unused by Detectron2"
    if key in _DROPPED_KEYS:
        return _DROPPED_KEYS[key]
    for prefix, reason in _DROPPED_PREFIXES.items():
        if key.startswith(prefix):
            return reason
    return None


def _flip_channels(model: dict[str, torch.Tensor], source: str) -> None:
    """Reverse the stem's input channels (RGB <-> BGR), so the first conv sees the same colors."""
    stem = model["stem.conv1.weight"]
    if stem.shape[1] != 3:
        raise InputError(f"{source}: the stem takes {stem.shape[1]} channels, not 3 (RGB/BGR).")
    model["stem.conv1.weight"] = stem.flip(1).contiguous()


def _map_keys(
    state: Mapping[str, Any], map_key: Callable[[str, Any], tuple[str | None, str | None]]
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str], list[str]]:
    """Sort a source state dict's keys by ``map_key(key, value)`` -> (target key, drop reason).

    Returns:
        The converted tensors by target key, the converted source keys (-> target), the dropped
        ones (-> reason) and those neither converted nor known (both None).
    """
    model: dict[str, torch.Tensor] = {}
    converted: dict[str, str] = {}
    dropped: dict[str, str] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        target, reason = map_key(key, value)
        if target is not None:
            converted[key] = target
            model[target] = value
        elif reason is not None:
            dropped[key] = reason
        else:
            unmatched.append(key)
    return model, converted, dropped, unmatched


def _check_converted(
    model: dict[str, torch.Tensor],
    unmatched: list[str],
    allow_unmatched: bool,
    overrides: Mapping[str, int | None],
    source: str,
) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """The checks every converted backbone passes: no unmatched keys (unless allowed), then the
    inferred and requested architectures and the requested one's missing keys."""
    _check_unmatched(unmatched, allow_unmatched, source)
    inferred = infer_arch(model, source)
    target, target_source = _target_arch(inferred, overrides, source)
    return inferred, target, check_backbone_state_dict(model, target, target_source)


def _target_arch(
    inferred: dict[str, int], overrides: Mapping[str, int | None], source: str
) -> tuple[dict[str, int], str]:
    """The requested architecture (``overrides`` over ``inferred``), and ``source`` named with
    what the checkpoint looks like when the two differ."""
    arch = {**inferred, **{k: v for k, v in overrides.items() if v is not None}}
    if arch != inferred:
        source = f"{source} (a {arch_name(inferred)})"
    return check_arch(arch, source), source


def convert_checkpoint(
    path: str,
    source_format: str = "auto",
    *,
    depth: int | None = None,
    stem_out_channels: int | None = None,
    res2_out_channels: int | None = None,
    input_format: str = "BGR",
    method: str | None = None,
    allow_unmatched: bool = False,
    trust_pickle: bool = False,
) -> Conversion:
    """Convert a ResNet checkpoint into ssdet's backbone format (in memory).

    Sources: torchvision state dicts (``torchvision.models.resnet*().state_dict()``, also as
    ``nn.Sequential`` of its children or under DataParallel's ``module.``); SimCLR-style
    checkpoints (the state dict under "state_dict" / "model", the ResNet under ``encoder.``,
    ``module.encoder.``, ``backbone.``, ``convnet.``, ``encoder_q.``..., projection heads
    ``projector.``, ``projection_head.``, ``g.``, ``fc.``... dropped); Detectron2-named
    checkpoints (``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean``, ...: the ``.pkl``
    files of Detectron2's ``tools/convert-torchvision-to-d2.py``, numpy arrays with
    ``__author__`` / ``matching_heuristics``; a Detectron2 detector's ResNet under
    ``backbone.bottom_up.`` or ``backbone.``, its FPN and heads dropped); ssdet's own format
    (validated, channel order adapted). The architecture is inferred from the tensors; the
    ``depth`` / ``*_channels`` arguments state the target and make a mismatch an error.

    ``.pkl`` files are read by the restricted unpickler of
    :func:`~ssdet.checkpoint.load_weights_pickle` (numpy arrays and plain containers only),
    everything else by ``torch.load``.

    Args:
        path: the source checkpoint.
        source_format: "auto", "torchvision", "simclr", "detectron2" or "ssdet".
        depth, stem_out_channels, res2_out_channels: the target ResNet (None: as inferred).
        input_format: channel order the converted stem should expect, "BGR" (Detectron2's and
            ssdet's default ``INPUT.FORMAT``) or "RGB". torchvision and SimCLR weights are RGB;
            Detectron2-named ones are BGR (Detectron2's default), except those whose
            ``__author__`` is "torchvision" (``convert-torchvision-to-d2.py``'s), RGB.
        method: the ``method`` recorded in the output; None: "converted" (ssdet sources keep
            theirs).
        allow_unmatched: leave out source keys that have no counterpart (listed in the report)
            instead of refusing the checkpoint.
        trust_pickle: load with ``weights_only=False``; only for files you trust (never
            for ``.pkl`` files, which are always read by the restricted unpickler).

    Returns:
        The converted checkpoint and its report.

    Raises:
        InputError: unreadable file, no ResNet found, shapes or keys that do not fit the
            target architecture, unmatched keys without ``allow_unmatched``.
    """
    if source_format not in SOURCE_FORMATS:
        raise InputError(f"Unknown source format {source_format!r}; use one of {SOURCE_FORMATS}.")
    if input_format not in INPUT_FORMATS:
        raise InputError(f"Unknown input format {input_format!r}; use one of {INPUT_FORMATS}.")
    if method is not None and method not in METHODS:
        raise InputError(f"Unknown method {method!r}; use one of {METHODS}.")
    source = f"Checkpoint {path!r}"
    obj = _load_source(path, trust_pickle)
    overrides = {
        "depth": depth,
        "stem_out_channels": stem_out_channels,
        "res2_out_channels": res2_out_channels,
    }
    provenance = {"source": os.path.abspath(path), "source_sha256": file_sha256(path)}

    is_ssdet = isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME
    if source_format == "ssdet" or (source_format == "auto" and is_ssdet):
        checkpoint, missing = validate_checkpoint(obj, source)
        target, _ = _target_arch(checkpoint["arch"], overrides, source)
        if target != checkpoint["arch"]:
            raise InputError(
                f"{source} is a {arch_name(checkpoint['arch'])}, not the requested "
                f"{arch_name(target)}."
            )
        extra = checkpoint["extra"]
        recorded = extra.get("input_format")
        if recorded is not None and recorded != input_format:
            _flip_channels(checkpoint["model"], source)
            extra["input_format"] = input_format
        return Conversion(
            arch=checkpoint["arch"],
            method=method or checkpoint["method"],
            model=checkpoint["model"],
            extra={**extra, **provenance, "source_format": "ssdet"},
            source_format="ssdet",
            converted={k: k for k in checkpoint["model"]},
            missing=missing,
        )

    state, container = _find_state_dict(obj, source)
    if is_ssdet:
        raise InputError(f"{source} is an ssdet backbone checkpoint; use --format ssdet or auto.")
    prefixes = _TORCHVISION_PREFIXES if source_format == "torchvision" else ()
    if source_format in ("simclr", "auto"):
        prefixes = _SIMCLR_PREFIXES + (_TORCHVISION_PREFIXES if source_format == "auto" else ())
    found = _backbone_prefix(state, prefixes)
    detectron2_prefix = _detectron2_prefix(state)
    if source_format == "detectron2" or (
        source_format == "auto" and found is None and detectron2_prefix is not None
    ):
        return _convert_detectron2(
            obj,
            state,
            container,
            source,
            overrides,
            input_format=input_format,
            method=method,
            allow_unmatched=allow_unmatched,
            provenance=provenance,
        )
    if found is None:
        also = (
            f", nor Detectron2's 'stem.conv1.weight' under {_prefix_list(_DETECTRON2_PREFIXES)}"
            if source_format == "auto"
            else ""
        )
        raise InputError(
            f"{source} has no ResNet in {source_format} layout: no 'conv1.weight' under any of "
            f"the prefixes {_prefix_list(prefixes)}{also}. Its keys start with: "
            f"{some_keys(sorted(state), 6)}.{_caffe2_hint(state)}"
        )
    prefix, sequential = found

    def map_key(key: str, value: Any) -> tuple[str | None, str | None]:
        if not key.startswith(prefix):
            return None, _drop_reason(key)
        tv_key = _source_key_to_torchvision(key.removeprefix(prefix), sequential)
        target = torchvision_to_detectron2_key(tv_key)
        if target is not None and isinstance(value, torch.Tensor):
            return target, None
        return None, _drop_reason(tv_key)

    model, converted, dropped, unmatched = _map_keys(state, map_key)
    inferred, target, missing = _check_converted(
        model, unmatched, allow_unmatched, overrides, source
    )
    auto_format = "torchvision" if prefix in _TORCHVISION_PREFIXES else "simclr"
    found_format = auto_format if source_format == "auto" else source_format
    # torchvision and the SimCLR implementations train on RGB images.
    if input_format != "RGB":
        _flip_channels(model, source)
    extra: dict[str, Any] = {
        **provenance,
        "source_format": found_format,
        "source_container": container,
        "source_prefix": prefix,
        "input_format": input_format,
        "dropped_keys": sorted(dropped),
        "unmatched_keys": sorted(unmatched),
    }
    if target["depth"] >= 50:
        # torchvision (ResNet v1.5) strides in the 3x3 conv of a bottleneck.
        extra["stride_in_1x1"] = False
    return Conversion(
        arch=target,
        method=method or "converted",
        model=model,
        extra=extra,
        source_format=found_format,
        prefix=prefix,
        converted=converted,
        dropped=dropped,
        unmatched=unmatched,
        missing=missing,
    )


def _caffe2_hint(state: Mapping[str, Any]) -> str:
    """What to do with Caffe2-named weights, when ``state`` has them; else ""."""
    # Detectron2's ImageNet backbones (MSRA R-50.pkl, ...) and Detectron1's files use Caffe2's
    # names, which Detectron2 matches by heuristics; no exact table maps them here.
    if not any(re.fullmatch(r"(conv1|res\d_\d+_branch\w+)_w", k) for k in state):
        return ""
    return (
        " It holds Caffe2 / Detectron1 names (conv1_w, res2_0_branch2a_w, ...), which are not "
        "converted: load it into a Detectron2 ResNet (MODEL.WEIGHTS) and save that state_dict."
    )


def _detectron2_prefix(state: Mapping[str, Any]) -> str | None:
    """The first of ``_DETECTRON2_PREFIXES`` under which ``state`` has a Detectron2 ResNet stem."""
    return next((p for p in _DETECTRON2_PREFIXES if p + "stem.conv1.weight" in state), None)


def _convert_detectron2(
    obj: Any,
    state: dict[str, Any],
    container: str,
    source: str,
    overrides: Mapping[str, int | None],
    *,
    input_format: str,
    method: str | None,
    allow_unmatched: bool,
    provenance: dict[str, str],
) -> Conversion:
    """:func:`convert_checkpoint` of a state dict in Detectron2's naming: the ResNet's keys are
    kept as they are; metadata, a detector's FPN and heads, and BN step counters are dropped."""
    prefix = _detectron2_prefix(state)
    if prefix is None:
        raise InputError(
            f"{source} has no ResNet in Detectron2's naming: no 'stem.conv1.weight' under any of "
            f"the prefixes {_prefix_list(_DETECTRON2_PREFIXES)}. Its keys start with: "
            f"{some_keys(sorted(state), 6)}.{_caffe2_hint(state)}"
        )

    def map_key(key: str, value: Any) -> tuple[str | None, str | None]:
        inner = key.removeprefix(prefix)
        if key in _DETECTRON2_METADATA:
            return None, "Detectron2 checkpoint metadata"
        if not key.startswith(prefix):
            return None, "not the bottom-up ResNet (a detector's FPN and heads)"
        if _DETECTRON2_RESNET_KEY.fullmatch(inner) and isinstance(value, torch.Tensor):
            return inner, None
        if inner.startswith("linear."):
            return None, "classifier head (linear)"
        return None, _drop_reason(inner)

    model, converted, dropped, unmatched = _map_keys(state, map_key)
    inferred, target, missing = _check_converted(
        model, unmatched, allow_unmatched, overrides, source
    )
    author = obj.get("__author__") if isinstance(obj, Mapping) else None
    # Detectron2's default INPUT.FORMAT is BGR; its tools/convert-torchvision-to-d2.py marks the
    # torchvision ResNets it converts, which were trained on RGB.
    source_input_format = "RGB" if author == "torchvision" else "BGR"
    if input_format != source_input_format:
        _flip_channels(model, source)
    extra: dict[str, Any] = {
        **provenance,
        "source_format": "detectron2",
        "source_container": container,
        "source_prefix": prefix,
        "source_input_format": source_input_format,
        "input_format": input_format,
        "dropped_keys": sorted(dropped),
        "unmatched_keys": sorted(unmatched),
    }
    if isinstance(author, str):
        extra["source_author"] = author
    if author == "torchvision" and target["depth"] >= 50:
        # torchvision (ResNet v1.5) strides in the 3x3 conv of a bottleneck.
        extra["stride_in_1x1"] = False
    return Conversion(
        arch=target,
        method=method or "converted",
        model=model,
        extra=extra,
        source_format="detectron2",
        prefix=prefix,
        converted=converted,
        dropped=dropped,
        unmatched=unmatched,
        missing=missing,
    )
