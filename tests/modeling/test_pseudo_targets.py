"""Score-weighted pseudo-label classification: RetinaNet's focal loss weighted per matched box."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ssdet.config import add_ssdet_config
from ssdet.modeling.pseudo_targets import score_weighted_classification

from ..conftest import REPO


@pytest.fixture(scope="module")
def retinanet():
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg)


def batch(classes: list[int], scores: list[float] | None) -> list[dict]:
    """Two 64x64 images: the first with a large and a small box far apart, the second with one."""
    images = []
    g = torch.Generator().manual_seed(0)
    for boxes, rows in (([[4, 4, 36, 36], [44, 44, 60, 60]], [0, 1]), ([[10, 20, 50, 50]], [2])):
        instances = Instances((64, 64))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor([classes[r] for r in rows])
        if scores is not None:
            instances.gt_scores = torch.tensor([scores[r] for r in rows])
        image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g)
        images.append({"image": image, "instances": instances})
    return images


def loss_sums(model, images, weighted: bool) -> dict[str, float]:
    """The losses before RetinaNet's division by its foreground-count average (which depends on
    the number of foreground anchors, different between the compared labelings)."""
    if hasattr(model, "loss_normalizer"):
        del model.loss_normalizer
    with EventStorage():
        if weighted:
            with score_weighted_classification(model):
                losses = model(images)
        else:
            losses = model(images)
    return {name: value.item() * model.loss_normalizer for name, value in losses.items()}


def test_scores_of_one_are_hard_labels(retinanet):
    hard = loss_sums(retinanet, batch([0, 1, 2], None), weighted=False)
    soft = loss_sums(retinanet, batch([0, 1, 2], [1.0, 1.0, 1.0]), weighted=True)
    assert soft == pytest.approx(hard, rel=1e-5)
    assert "label_anchors" not in vars(retinanet) and "losses" not in vars(retinanet)


def test_a_score_of_zero_removes_its_boxes_anchors_as_an_ignore_region_does(retinanet):
    # Score 0 on the small box: its foreground anchors leave the loss. Detectron2's ignore
    # regions (class -1) take exactly those anchors out, and only the classification changes.
    weighted = loss_sums(retinanet, batch([0, 1, 2], [1.0, 0.0, 1.0]), weighted=True)
    ignored = loss_sums(retinanet, batch([0, -1, 2], None), weighted=False)
    hard = loss_sums(retinanet, batch([0, 1, 2], None), weighted=False)
    assert weighted["loss_cls"] == pytest.approx(ignored["loss_cls"], rel=1e-5)
    assert weighted["loss_cls"] < hard["loss_cls"]
    assert weighted["loss_box_reg"] == pytest.approx(hard["loss_box_reg"], rel=1e-5)


def test_the_loss_is_linear_in_each_boxes_score(retinanet):
    def loss_cls(scores):
        return loss_sums(retinanet, batch([0, 1, 2], scores), weighted=True)["loss_cls"]

    none, full = loss_cls([0.0, 0.0, 0.0]), loss_cls([1.0, 1.0, 1.0])
    assert loss_cls([0.5, 0.5, 0.5]) == pytest.approx((none + full) / 2, rel=1e-5)
    # Box by box: the large box's anchors, then the second image's, each scaled by its own score.
    large = loss_cls([1.0, 0.0, 0.0]) - none
    other = loss_cls([0.0, 0.0, 1.0]) - none
    assert loss_cls([0.3, 0.0, 0.8]) == pytest.approx(none + 0.3 * large + 0.8 * other, rel=1e-5)


def test_pseudo_boxes_without_scores_are_refused(retinanet):
    with pytest.raises(ValueError, match="gt_scores"):
        loss_sums(retinanet, batch([0, 1, 2], None), weighted=True)
    # The detector is left as it was, even after the error.
    assert "label_anchors" not in vars(retinanet)
    assert retinanet.anchor_matcher.__class__.__name__ == "Matcher"
