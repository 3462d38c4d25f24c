"""SimCLR's NT-Xent loss (normalized temperature-scaled cross-entropy, Chen et al. 2020)."""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from detectron2.utils import comm

__all__ = ["nt_xent_loss"]


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` concatenated in rank order; gradients flow back to each process."""
    return torch.cat(dist_fn.all_gather(x), dim=0)


def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather_distributed: bool = True
) -> torch.Tensor:
    """NT-Xent over the two views of a batch: each view must pick out its pair among all views.

    With ``n`` images (all processes together) there are ``2n`` views. For view ``i`` with positive
    ``p(i)`` (the other view of the same image) and cosine similarities ``s``:

        loss_i = -log( exp(s_i,p(i) / t) / sum_{k != i} exp(s_i,k / t) )

    and the loss is the mean of ``loss_i`` over this process's ``2B`` views. When
    ``gather_distributed`` and several processes run, the other processes' views serve as further
    negatives (gathered with gradient), and the mean of the processes' losses, which DDP's
    gradient averaging optimizes, is exactly the single-process loss of the whole batch.

    Args:
        z1: embeddings of the first views, (B, D); row b is image b. Need not be normalized.
        z2: embeddings of the second views, (B, D), in the same image order.
        temperature: the softmax temperature t (> 0).
        gather_distributed: take negatives from every process; False uses only this process's.

    Returns:
        The scalar loss.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"The NT-Xent temperature must be > 0, got {temperature}")
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    batch = z1.shape[0]
    distributed = gather_distributed and dist.is_initialized() and comm.get_world_size() > 1
    if distributed:
        world, rank = comm.get_world_size(), comm.get_rank()
        all_z1, all_z2 = _gather_with_grad(z1), _gather_with_grad(z2)
    else:
        world, rank = 1, 0
        all_z1, all_z2 = z1, z2
    # Candidates: all first views, then all second views. This process's image b is image
    # offset + b overall: its first view sits at column offset + b, its second at n + offset + b.
    n, offset = world * batch, rank * batch
    candidates = torch.cat([all_z1, all_z2], dim=0)
    anchors = torch.cat([z1, z2], dim=0)
    logits = anchors @ candidates.t() / temperature
    local = torch.arange(batch, device=z1.device) + offset
    self_index = torch.cat([local, local + n])
    positive = torch.cat([local + n, local])
    rows = torch.arange(2 * batch, device=z1.device)
    # A view is not its own negative.
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, positive)
