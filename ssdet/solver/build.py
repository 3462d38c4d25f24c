"""Optimizers: Detectron2's SGD, or AdamW for short from-scratch schedules.

Detectron2 builds SGD only. Rand Init detectors trained for a few thousand iterations (the mini
world, small-compute ablations) converge much faster with AdamW, so ``SSDET.SOLVER.OPTIMIZER``
selects it. Parameter groups (no weight decay on norm layers and biases as configured), gradient
clipping and the LR schedule stay Detectron2's.
"""

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_d2_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ssdet.utils.errors import InputError

__all__ = ["OPTIMIZERS", "build_optimizer"]

OPTIMIZERS = ("SGD", "ADAMW")


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer named by ``cfg.SSDET.SOLVER.OPTIMIZER`` for ``model``.

    Args:
        cfg: a config with ``add_ssdet_config`` keys; SOLVER.BASE_LR, WEIGHT_DECAY(_NORM/_BIAS),
            BIAS_LR_FACTOR and CLIP_GRADIENTS apply to both optimizers, MOMENTUM and NESTEROV to SGD
            only, SSDET.SOLVER.BETAS to AdamW only.
        model: the model whose trainable parameters are optimized.

    Returns:
        The optimizer, with Detectron2's gradient clipping when configured.
    """
    name = cfg.SSDET.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        return build_d2_optimizer(cfg, model)
    if name != "ADAMW":
        raise InputError(
            f"Unknown optimizer SSDET.SOLVER.OPTIMIZER={cfg.SSDET.SOLVER.OPTIMIZER!r}; "
            f"use one of {', '.join(OPTIMIZERS)}."
        )
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.SOLVER.BASE_LR,
        betas=tuple(cfg.SSDET.SOLVER.BETAS),
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
    return maybe_add_gradient_clipping(cfg, optimizer)
