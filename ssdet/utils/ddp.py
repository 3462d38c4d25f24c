"""The model inside a data-parallel wrapper (Detectron2 has no public helper for it)."""

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ["unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """``model.module`` of a ``DistributedDataParallel`` or ``DataParallel``, else ``model``."""
    if isinstance(model, DistributedDataParallel | DataParallel):
        return model.module
    return model
