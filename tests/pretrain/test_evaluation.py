"""The linear probe and the top-1 evaluator."""

import os

import torch
from detectron2.engine import launch
from detectron2.utils import comm

from ssdet.pretrain import ClassificationEvaluator, fit_linear_probe
from ssdet.pretrain.evaluation import _use_main_process_buffers, select_probe_weight_decay


def test_linear_probe_separates_separable_features():
    torch.manual_seed(0)
    centers = 5 * torch.randn(4, 16)
    labels = torch.arange(4).repeat_interleave(30)
    features = centers[labels] + torch.randn(120, 16) + 100.0  # offset: standardization copes
    probe = fit_linear_probe(features[::2], labels[::2], num_classes=4, max_iter=50)
    held_out = probe(features[1::2]).argmax(1)
    assert (held_out == labels[1::2]).float().mean() > 0.95
    # No randomness: the same features give the same probe.
    again = fit_linear_probe(features[::2], labels[::2], num_classes=4, max_iter=50)
    assert torch.equal(probe.linear.weight, again.linear.weight)


def test_linear_probe_on_uninformative_features_is_near_chance():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat(100)
    features = torch.randn(400, 8)
    probe = fit_linear_probe(features[:200], labels[:200], num_classes=4, weight_decay=1e-2)
    accuracy = (probe(features[200:]).argmax(1) == labels[200:]).float().mean()
    assert accuracy < 0.45


def test_classification_evaluator_counts_top1():
    evaluator = ClassificationEvaluator()
    evaluator.reset()
    inputs = [{"class_id": c} for c in (0, 1, 2, 2)]
    scores = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    evaluator.process(inputs, [{"scores": s} for s in scores])
    assert evaluator.evaluate() == {"top1": 75.0}


def test_weight_decay_is_chosen_on_held_out_train_features():
    torch.manual_seed(0)
    centers = 3 * torch.randn(4, 16)
    labels = torch.arange(4).repeat_interleave(40)
    features = centers[labels] + torch.randn(160, 16)
    # A penalty of 1e3 leaves the probe at chance: the later, small candidate must win.
    assert select_probe_weight_decay(features, labels, 4, (1e3, 1e-4), max_iter=50) == 1e-4
    # Deterministic; one candidate, or nothing to hold out, returns the first.
    picks = {
        select_probe_weight_decay(features, labels, 4, (1e-2, 1e-4), max_iter=50) for _ in "ab"
    }
    assert len(picks) == 1
    assert select_probe_weight_decay(features, labels, 4, (5.0,)) == 5.0
    assert select_probe_weight_decay(features, labels, 4, (1e3, 1e-4), holdout_fraction=0) == 1e3


def _buffers_worker(output_dir: str) -> None:
    rank = comm.get_rank()
    model = torch.nn.BatchNorm1d(3)
    model.running_mean.fill_(float(rank + 1))
    _use_main_process_buffers(model)
    torch.save(model.running_mean, os.path.join(output_dir, f"rank{rank}.pt"))
    # Neither process exits while the other may still be in the broadcast: gloo aborts then.
    comm.synchronize()


def test_features_use_the_main_process_batchnorm_statistics(tmp_path):
    """Each process's BatchNorm statistics differ after training (DDP broadcasts them only at the
    start of a forward): the probe's processes all take the main process's."""
    launch(_buffers_worker, 2, dist_url="auto", args=(str(tmp_path),))
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), torch.ones(3))
