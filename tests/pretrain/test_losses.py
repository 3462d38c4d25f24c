"""NT-Xent on inputs whose loss is known, its invariances, and its distributed form."""

import math
import os

import pytest
import torch
from detectron2.engine import launch
from detectron2.utils import comm

from ssdet.pretrain import nt_xent_loss


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The definition, written out view by view with Python floats."""
    views = [v / v.norm() for v in torch.cat([z1, z2]).tolist() for v in [torch.tensor(v)]]
    n = len(z1)
    total = 0.0
    for i, a in enumerate(views):
        positive = (i + n) % (2 * n)
        sims = {k: float(a @ b) / t for k, b in enumerate(views) if k != i}
        total += -sims[positive] + math.log(sum(math.exp(s) for s in sims.values()))
    return total / (2 * n)


def test_two_pairs_by_hand():
    # Two images whose views coincide, the images orthogonal: every view has similarity 1 with
    # its positive and 0 with both negatives, so loss = -log(e^(1/t) / (e^(1/t) + 2)).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for t in (0.1, 0.5, 1.0):
        expected = math.log(1 + 2 * math.exp(-1 / t))
        assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_two_pairs_with_known_cosines():
    # Views of image 0 at 60 degrees (cosine 0.5), of image 1 at 90 degrees (cosine 0), and
    # image 1 opposite image 0: every similarity is a cosine of a known angle.
    deg = math.radians
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    z2 = torch.tensor([[math.cos(deg(60)), math.sin(deg(60))], [0.0, -1.0]])
    t = 0.5
    # view z1_0: positive z2_0 (0.5), negatives z1_1 (-1), z2_1 (0)
    # view z1_1: positive z2_1 (0), negatives z1_0 (-1), z2_0 (-0.5)
    # view z2_0: positive z1_0 (0.5), negatives z1_1 (-0.5), z2_1 (cos 150 deg)
    # view z2_1: positive z1_1 (0), negatives z1_0 (0), z2_0 (cos 150 deg)
    c150 = math.cos(deg(150))
    rows = [(0.5, [-1.0, 0.0]), (0.0, [-1.0, -0.5]), (0.5, [-0.5, c150]), (0.0, [0.0, c150])]
    expected = (
        sum(
            -p / t + math.log(math.exp(p / t) + sum(math.exp(n / t) for n in negs))
            for p, negs in rows
        )
        / 4
    )
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(reference_nt_xent(z1, z2, t), rel=1e-6)


def test_matches_the_definition_on_random_inputs():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    assert nt_xent_loss(z1, z2, 0.3).item() == pytest.approx(reference_nt_xent(z1, z2, 0.3), 1e-5)


def test_aligned_views_beat_random_views_and_loss_is_symmetric():
    torch.manual_seed(0)
    z1 = torch.randn(16, 32)
    aligned = nt_xent_loss(z1, z1 + 0.01 * torch.randn(16, 32), 0.2)
    unrelated = nt_xent_loss(z1, torch.randn(16, 32), 0.2)
    assert aligned < unrelated
    z2 = torch.randn(16, 32)
    assert nt_xent_loss(z1, z2, 0.2).item() == pytest.approx(nt_xent_loss(z2, z1, 0.2).item())
    # Embeddings are compared by direction only.
    assert nt_xent_loss(3 * z1, z2, 0.2).item() == pytest.approx(nt_xent_loss(z1, z2, 0.2).item())


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="must both be"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(3, 3), 0.5)


def _distributed_worker(z1: torch.Tensor, z2: torch.Tensor, output_dir: str) -> None:
    rank, world = comm.get_rank(), comm.get_world_size()
    part = len(z1) // world
    mine = slice(rank * part, (rank + 1) * part)
    a = z1[mine].clone().requires_grad_()
    b = z2[mine].clone().requires_grad_()
    loss = nt_xent_loss(a, b, 0.5)
    loss.backward()
    local_only = nt_xent_loss(z1[mine], z2[mine], 0.5, gather_distributed=False)
    torch.save(
        {"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad, "local": local_only},
        os.path.join(output_dir, f"rank{rank}.pt"),
    )
    # Neither process exits while the other may still be in a collective: gloo aborts then.
    comm.synchronize()


def test_negatives_gathered_across_processes_equal_one_big_batch(tmp_path):
    """Two gloo processes with half the batch each: the mean of their losses is the loss of the
    whole batch, and their gradients (as DDP averages them) are the whole batch's."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    launch(_distributed_worker, 2, dist_url="auto", args=(z1, z2, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    whole = nt_xent_loss(a, b, 0.5)
    whole.backward()
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(whole.item(), 1e-5)
    grad_a = torch.cat([r["grad_a"] for r in ranks]) / 2
    grad_b = torch.cat([r["grad_b"] for r in ranks]) / 2
    assert torch.allclose(grad_a, a.grad, atol=1e-6)
    assert torch.allclose(grad_b, b.grad, atol=1e-6)
    # Without gathering, each process sees only its own 3 images.
    assert ranks[0]["local"].item() == pytest.approx(nt_xent_loss(z1[:3], z2[:3], 0.5).item())
