"""A stage's recorded setup (``stage.json``) and what counts as a difference."""

from ssdet.engine.experiment.fingerprint import spec_differences


def test_a_key_added_to_ssdet_after_a_stage_was_made_is_no_difference_at_its_default():
    key = "SSDET.SOLVER.GRAD_ACCUM_STEPS"  # a key the old stage.json lacks
    old = {"kind": "train", "config": {"SOLVER.MAX_ITER": 20}}
    new = {"kind": "train", "config": {"SOLVER.MAX_ITER": 20, key: 1}}
    assert spec_differences(old, new) == []
    assert spec_differences(old, {**new, "config": {**new["config"], key: 2}}) == [f"{key} 1 -> 2"]
    assert spec_differences(old, {**new, "config": {"SOLVER.MAX_ITER": 40, key: 1}}) == [
        "SOLVER.MAX_ITER 20 -> 40"
    ]


def test_a_renamed_key_is_compared_under_its_new_name():
    old = {"kind": "label", "config": {"SSDET.PSEUDO_LABELS.LABELING_SCORE_FLOOR": 0.05}}
    new = {"kind": "label", "config": {"SSDET.LABELING.SCORE_FLOOR": 0.05}}
    assert spec_differences(old, new) == []
    changed = {"kind": "label", "config": {"SSDET.LABELING.SCORE_FLOOR": 0.1}}
    assert spec_differences(old, changed) == ["SSDET.LABELING.SCORE_FLOOR 0.05 -> 0.1"]
