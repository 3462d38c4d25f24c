"""The student's loss combination (:class:`~ssdet.engine.pseudo_loss.PseudoLossWeighting`), on
known values."""

import json

import pytest
import torch

from ssdet.engine.pseudo_loss import PseudoLossWeighting
from ssdet.utils.errors import InputError

from ..data.test_mixed import student_cfg


def losses(**values) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(float(v), requires_grad=True) for k, v in values.items()}


def test_no_normalization_is_the_weighted_sum():
    weighting = PseudoLossWeighting("none", pseudo_weight=0.5)
    human, pseudo = losses(loss_cls=1, loss_box_reg=2), losses(loss_cls=3, loss_box_reg=1)
    loss = weighting(human, pseudo)
    assert loss.total.item() == pytest.approx(3 + 0.5 * 4)
    assert (loss.human.item(), loss.pseudo.item(), loss.pseudo_weight.item()) == (3, 4, 0.5)
    assert loss.averages is None and weighting.state_dict() == {"averages": None}


def test_moving_average_normalization_arithmetic_and_gradient():
    weighting = PseudoLossWeighting("moving_average", pseudo_weight=2.0, momentum=0.9)
    # Step 1: the averages start at the first values, avg(L_h) / avg(L_p) = 3 / 6.
    loss = weighting(losses(a=1, b=2), losses(a=6))
    assert loss.averages.tolist() == pytest.approx([3, 6])
    assert loss.pseudo_weight.item() == pytest.approx(2.0 * 3 / 6)
    assert loss.total.item() == pytest.approx(3 + 1.0 * 6)
    # Step 2: avg = 0.9 * avg + 0.1 * loss.
    human, pseudo = losses(a=5), losses(a=1)
    loss = weighting(human, pseudo)
    avg_h, avg_p = 0.9 * 3 + 0.1 * 5, 0.9 * 6 + 0.1 * 1
    assert loss.averages.tolist() == pytest.approx([avg_h, avg_p])
    weight = 2.0 * avg_h / avg_p
    assert loss.pseudo_weight.item() == pytest.approx(weight)
    assert loss.total.item() == pytest.approx(5 + weight * 1)
    # No gradient flows through the ratio: dL/dL_h = 1, dL/dL_p = w.
    loss.total.backward()
    assert human["a"].grad.item() == pytest.approx(1.0)
    assert pseudo["a"].grad.item() == pytest.approx(weight)


def test_one_part_only():
    weighting = PseudoLossWeighting("none", pseudo_weight=0.5)
    assert weighting(losses(a=2), {}).total.item() == 2
    assert weighting({}, losses(a=2)).total.item() == 1
    assert PseudoLossWeighting("moving_average")(losses(a=2), {}).total.item() == 2
    with pytest.raises(ValueError, match="both"):
        PseudoLossWeighting("moving_average")({}, losses(a=2))


def test_unknown_normalization_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: none, moving_average"):
        PseudoLossWeighting("sum")


def test_moving_average_needs_both_parts_in_the_config():
    cfg = student_cfg()
    cfg.SSDET.SELF_TRAINING.PSEUDO_RATIO = 1.0
    with pytest.raises(InputError, match="LOSS_NORMALIZATION 'none'"):
        PseudoLossWeighting(cfg)
    cfg.SSDET.SELF_TRAINING.LOSS_NORMALIZATION = "none"
    assert PseudoLossWeighting(cfg).pseudo_weight == 1.0


def test_moving_averages_survive_a_state_dict_round_trip():
    steps = [(losses(a=3), losses(a=6)), (losses(a=5), losses(a=1)), (losses(a=2), losses(a=4))]
    original = PseudoLossWeighting(momentum=0.9)
    for human, pseudo in steps[:2]:
        original(human, pseudo)
    state = json.loads(json.dumps(original.state_dict()))  # plain values, as checkpoints hold
    resumed = PseudoLossWeighting(momentum=0.9)
    resumed.load_state_dict(state)
    a, b = original(*steps[2]), resumed(*steps[2])
    assert a.total.item() == pytest.approx(b.total.item())
    assert a.averages.tolist() == pytest.approx(b.averages.tolist())


def test_pseudo_term_weights_apply_before_the_sum_and_its_normalization():
    weighting = PseudoLossWeighting(
        "moving_average", momentum=0.9, term_weights={"loss_box_reg": 0.0, "loss_cls": 2.0}
    )
    human, pseudo = losses(loss_cls=1, loss_box_reg=2), losses(loss_cls=3, loss_box_reg=5)
    loss = weighting(human, pseudo)
    # L_p = 2 * 3 + 0 * 5: the moving average and the weight are of the weighted terms.
    assert loss.pseudo.item() == pytest.approx(6.0)
    assert loss.averages.tolist() == pytest.approx([3.0, 6.0])
    loss.total.backward()
    assert pseudo["loss_box_reg"].grad.item() == 0.0
    assert pseudo["loss_cls"].grad.item() == pytest.approx(2.0 * 3 / 6)
    # The human-labeled images' terms are never weighted.
    assert human["loss_box_reg"].grad.item() == 1.0


def test_pseudo_term_weights_from_the_config_and_their_errors():
    cfg = student_cfg()
    cfg.SSDET.SELF_TRAINING.PSEUDO_LOSS_TERM_WEIGHTS = [["loss_box_reg", 0]]
    weighting = PseudoLossWeighting(cfg)
    assert weighting.term_weights == {"loss_box_reg": 0.0}
    with pytest.raises(InputError, match=r"names \['loss_bbox'\].*terms are loss_cls"):
        PseudoLossWeighting(term_weights={"loss_bbox": 0.0})(losses(loss_cls=1), losses(loss_cls=1))
    for bad in ([["loss_cls"]], [["loss_cls", 1], ["loss_cls", 0]], [[0.5, "loss_cls"]]):
        cfg.SSDET.SELF_TRAINING.PSEUDO_LOSS_TERM_WEIGHTS = bad
        with pytest.raises(InputError, match="takes \\[loss name, weight\\] pairs"):
            PseudoLossWeighting(cfg)
    with pytest.raises(InputError, match="must be >= 0"):
        PseudoLossWeighting(term_weights={"loss_cls": -1.0})
