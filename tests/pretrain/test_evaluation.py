"""The linear probe and the top-1 evaluator."""

import torch

from ssdet.pretrain import ClassificationEvaluator, fit_linear_probe


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
