"""A stock-Detectron2 config beside each final checkpoint, so that the model loads without ssdet.

A run's ``config.yaml`` is ssdet's: a plain Detectron2's ``get_cfg().merge_from_file`` refuses its
``SSDET`` keys, then its backbone builder's name. :func:`write_stock_config` writes
``config_detectron2.yaml`` beside the weights (every ``model_final.pth`` of tools/train_net.py, the
experiment's of tools/self_train.py): Detectron2's keys only, with the run's values, ssdet's
backbone builders replaced by Detectron2's where these build the same network (bottleneck ResNets;
R18/R34 at Detectron2's width, 64 res2 channels), and ``MODEL.WEIGHTS`` the weights' absolute path.

Detectron2's builder cannot build the narrower R18/R34 of the mini world: it asserts
``RES2_OUT_CHANNELS == 64``. Their config names the builder of
:mod:`ssdet.modeling.any_width_resnet` instead, a module that imports Detectron2 only; it is
copied beside the config, whose header says to import it before building the model.
"""

import os
import textwrap
from collections.abc import Iterable

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
from fvcore.common.registry import Registry

import ssdet.modeling.any_width_resnet as any_width
from ssdet.modeling.fcos import FCOS_DEFAULTS, SsdetFCOS
from ssdet.utils.io import atomic_open

__all__ = ["ANY_WIDTH_MODULE", "STOCK_CONFIG", "stock_config", "write_stock_config"]

# The file names, beside the weights.
STOCK_CONFIG = "config_detectron2.yaml"
ANY_WIDTH_MODULE = os.path.basename(any_width.__file__)

_ANY_WIDTH_RESNET = any_width.build_resnet_any_width_backbone.__name__
_ANY_WIDTH_RETINANET = any_width.build_retinanet_resnet_any_width_fpn_backbone.__name__
# Backbone builders of any width -> (Detectron2's builder of the same network at its width, the
# any-width builder a plain Detectron2 install gets from ANY_WIDTH_MODULE).
_BACKBONES = {
    "build_ssdet_resnet_backbone": ("build_resnet_backbone", _ANY_WIDTH_RESNET),
    "build_ssdet_retinanet_resnet_fpn_backbone": (
        "build_retinanet_resnet_fpn_backbone",
        _ANY_WIDTH_RETINANET,
    ),
    _ANY_WIDTH_RESNET: ("build_resnet_backbone", _ANY_WIDTH_RESNET),
    _ANY_WIDTH_RETINANET: ("build_retinanet_resnet_fpn_backbone", _ANY_WIDTH_RETINANET),
}


def _fits_detectron2_resnet(cfg: CfgNode) -> bool:
    """Whether Detectron2's ``build_resnet_backbone`` builds the any-width builder's network: its
    R18/R34 asserts hold (the any-width builder ignores the keys that they check)."""
    resnets = cfg.MODEL.RESNETS
    return resnets.DEPTH >= 50 or (
        resnets.RES2_OUT_CHANNELS == 64
        and resnets.NUM_GROUPS == 1
        and resnets.RES5_DILATION == 1
        and not any(resnets.DEFORM_ON_PER_STAGE)
    )


def _copy_known(stock: CfgNode, values: CfgNode, prefix: str = "") -> list[str]:
    """Set the keys of ``stock`` that ``values`` has to its values; return the keys ``stock``
    lacks (``SSDET`` and any other key a project added)."""
    unknown = []
    for key, value in values.items():
        name = prefix + key
        if key not in stock:
            unknown.append(name)
        elif isinstance(value, CfgNode) and isinstance(stock[key], CfgNode):
            unknown += _copy_known(stock[key], value, name + ".")
        else:
            stock[key] = value
    return unknown


def _registered_outside_detectron2(registry: Registry, name: str) -> str | None:
    """Who registered ``name`` when it is not Detectron2 (a module, or that nobody did here)."""
    if name not in registry:
        return "registered by no module of the process that wrote this file"
    module = registry.get(name).__module__
    return None if module.split(".")[0] == "detectron2" else f"registered by {module}"


def stock_config(cfg: CfgNode, weights: str) -> tuple[CfgNode, list[str]]:
    """The Detectron2 config of ``cfg``'s model with ``weights``, and notes for its header.

    Args:
        cfg: a run's config (ssdet's keys included).
        weights: the checkpoint the config should load (``MODEL.WEIGHTS``, made absolute).

    Returns:
        A config of ``detectron2.config.get_cfg()``'s keys only, and the lines (no ``#``) that
        say what a plain Detectron2 install needs beyond it; none when it needs nothing.
    """
    stock = get_cfg()
    unknown = [k for k in _copy_known(stock, cfg) if k != "SSDET" and not k.startswith("SSDET.")]
    stock.MODEL.WEIGHTS = os.path.abspath(weights)
    notes = []
    if unknown:
        notes.append(f"Left out, not Detectron2 keys: {', '.join(unknown)}.")
    backbone = stock.MODEL.BACKBONE.NAME
    if backbone in _BACKBONES:
        detectron2_builder, any_width_builder = _BACKBONES[backbone]
        if _fits_detectron2_resnet(stock):
            stock.MODEL.BACKBONE.NAME = detectron2_builder
        else:
            stock.MODEL.BACKBONE.NAME = any_width_builder
            resnets = stock.MODEL.RESNETS
            notes += [
                f"MODEL.BACKBONE.NAME {any_width_builder} is not Detectron2's: its "
                f"{detectron2_builder} asserts RES2_OUT_CHANNELS 64 for R18/R34, and this "
                f"R{resnets.DEPTH} has RES2_OUT_CHANNELS {resnets.RES2_OUT_CHANNELS}.",
                f"{ANY_WIDTH_MODULE} beside this file registers it (it imports Detectron2 only); "
                "import it before building the model:",
                f'    sys.path.insert(0, "{os.path.dirname(stock.MODEL.WEIGHTS)}")',
                f"    import {os.path.splitext(ANY_WIDTH_MODULE)[0]}",
            ]
    if stock.MODEL.META_ARCHITECTURE == SsdetFCOS.__name__:
        changed = {k: v for k, v in cfg.SSDET.FCOS.items() if v != FCOS_DEFAULTS[k]}
        if changed:
            notes.append(
                f"Left out with SSDET: SSDET.FCOS {changed}; built without SSDET, SsdetFCOS uses "
                f"Detectron2's FCOS defaults {FCOS_DEFAULTS} (the same weights load either way)."
            )
    for key, registry, name in (
        ("MODEL.META_ARCHITECTURE", META_ARCH_REGISTRY, stock.MODEL.META_ARCHITECTURE),
        ("MODEL.BACKBONE.NAME", BACKBONE_REGISTRY, stock.MODEL.BACKBONE.NAME),
    ):
        where = _registered_outside_detectron2(registry, name)
        if where is not None and name not in (_ANY_WIDTH_RESNET, _ANY_WIDTH_RETINANET):
            notes.append(
                f"{key} {name} is not Detectron2's ({where}): a plain Detectron2 install cannot "
                "build this model without it."
            )
    return stock, notes


def _comment(paragraphs: Iterable[str]) -> str:
    """YAML comment lines: prose wrapped at 100 characters, indented code lines kept."""
    lines = []
    for text in paragraphs:
        lines += [text] if text.startswith("    ") else textwrap.wrap(text, width=98)
    return "".join(f"# {line}\n" for line in lines)


def write_stock_config(cfg: CfgNode, weights: str) -> str:
    """Write ``config_detectron2.yaml`` beside ``weights`` (see the module docstring).

    ``ANY_WIDTH_MODULE`` is copied beside it when the config names its backbone builder. Both
    files are written atomically.

    Args:
        cfg: the run's config.
        weights: the run's final weights (``{"model": state_dict}`` of the model ``cfg`` builds).

    Returns:
        The config's path.
    """
    stock, notes = stock_config(cfg, weights)
    folder = os.path.dirname(stock.MODEL.WEIGHTS)
    path = os.path.join(folder, STOCK_CONFIG)
    header = [
        f"The model of {os.path.basename(weights)} for stock Detectron2, written by ssdet: "
        "Detectron2's keys only (no SSDET), Detectron2's builders where they build this network. "
        "With a plain Detectron2 install:",
        "    cfg = detectron2.config.get_cfg()",
        f'    cfg.merge_from_file("{path}")',
        "    predictor = detectron2.engine.DefaultPredictor(cfg)",
        "MODEL.WEIGHTS is the weights' absolute path: set it again if the folder moves (and "
        'MODEL.DEVICE "cpu" on a machine without a GPU).',
        *notes,
    ]
    with atomic_open(path) as f:
        f.write(_comment(header) + stock.dump())
    if stock.MODEL.BACKBONE.NAME in (_ANY_WIDTH_RESNET, _ANY_WIDTH_RETINANET):
        with (
            open(any_width.__file__) as source,
            atomic_open(os.path.join(folder, ANY_WIDTH_MODULE)) as f,
        ):
            f.write(source.read())
    return path
