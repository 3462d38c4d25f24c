"""A self-training experiment checks what it can before any stage runs, fingerprints a given
teacher checkpoint, and a stage that refuses its input records no setup. (Issue 16, item 6.)"""

import json
import os

import pytest
import torch
from detectron2.modeling import build_model

from ssdet.data.pseudo_labels import file_sha256
from ssdet.engine.defaults import load_cfg
from ssdet.engine.experiment import plan_experiment, run_self_training
from ssdet.engine.experiment import run as experiment_run
from ssdet.utils.errors import InputError

from ..conftest import REPO
from ..engine.experiment.test_run import EXPERIMENT, self_train

TEACHER_CONFIG = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def save_teacher(path: str, seed: int, drop: str = "") -> str:
    """A randomly initialized teacher of the experiment's teacher config, without ``drop``."""
    torch.manual_seed(seed)
    model = build_model(load_cfg(TEACHER_CONFIG, ["MODEL.DEVICE", "cpu"]))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(drop or "\0")}
    torch.save({"model": state}, path)
    return path


@pytest.mark.parametrize(
    "opts,message",
    [
        # Only the student reads it: it used to be found after the teacher trained and labeled.
        (
            ["SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY", "S9"],
            r"Stage round1/student .*PSEUDO_AUGMENT_POLICY: Unknown augmentation policy 'S9'",
        ),
        (["SSDET.SELF_TRAINING.LOSS_NORMALIZATION", "mean"], "Unknown .*LOSS_NORMALIZATION"),
        (["SSDET.SELF_TRAINING.PSEUDO_CLS_TARGET", "soft"], "Unknown .*PSEUDO_CLS_TARGET"),
        (["SSDET.NOISE.DROPOUT", "1.5"], r"SSDET.NOISE.DROPOUT must be in \[0, 1\)"),
        (["SSDET.PSEUDO_LABELS.BALANCE_SUBSAMPLE", "x"], "Unknown class-balancing subsample"),
        (
            ["SSDET.INIT", "IMAGENET"],
            "Stage teacher .*SSDET.INIT IMAGENET needs SSDET.INIT_WEIGHTS",
        ),
    ],
)
def test_a_bad_setting_of_any_stage_stops_the_experiment_before_anything_is_written(
    tiny_world, tmp_path, opts, message
):
    output_dir = tmp_path / "exp"
    with pytest.raises(InputError, match=message):
        self_train(output_dir, *opts)
    assert not output_dir.exists()


def test_a_teacher_checkpoint_without_its_head_is_refused_before_it_is_evaluated(
    tiny_world, tmp_path
):
    weights = save_teacher(str(tmp_path / "teacher.pth"), seed=0, drop="head.cls_score")
    opts = ["OUTPUT_DIR", str(tmp_path / "exp"), "SSDET.EXPERIMENT.TEACHER_WEIGHTS", weights]
    with pytest.raises(InputError, match=r"TEACHER_WEIGHTS .* do not fit .*head\.cls_score"):
        plan_experiment(EXPERIMENT, opts)


class _AfterTeacher(Exception):
    """Stops the experiment after its teacher stage: the tests here need no student."""


def test_a_replaced_teacher_checkpoint_is_evaluated_again(tiny_world, tmp_path, monkeypatch):
    run_stage = experiment_run._run_stage

    def teacher_only(stage, plan, launch_args):
        if stage.kind != "evaluate":
            raise _AfterTeacher
        run_stage(stage, plan, launch_args)

    monkeypatch.setattr(experiment_run, "_run_stage", teacher_only)
    weights = save_teacher(str(tmp_path / "teacher.pth"), seed=0)
    output_dir = tmp_path / "exp"
    teacher = output_dir / "teacher"
    with pytest.raises(_AfterTeacher):
        self_train(output_dir, "SSDET.EXPERIMENT.TEACHER_WEIGHTS", weights)
    spec = json.loads((teacher / "stage.json").read_text())
    assert spec["weights_sha256"] == file_sha256(weights)
    evaluated = (teacher / "final_metrics.json").stat().st_mtime_ns

    # The same file: the evaluation is reused.
    with pytest.raises(_AfterTeacher):
        self_train(output_dir, "SSDET.EXPERIMENT.TEACHER_WEIGHTS", weights)
    assert (teacher / "final_metrics.json").stat().st_mtime_ns == evaluated

    # Other weights under the same name: evaluated again, and recorded.
    save_teacher(weights, seed=1)
    with pytest.raises(_AfterTeacher):
        self_train(output_dir, "SSDET.EXPERIMENT.TEACHER_WEIGHTS", weights)
    assert (teacher / "final_metrics.json").stat().st_mtime_ns != evaluated
    spec = json.loads((teacher / "stage.json").read_text())
    assert spec["weights_sha256"] == file_sha256(weights)
    log = (output_dir / "log.txt").read_text()
    assert "teacher was evaluated with another setup (weights_sha256" in log
    # The labeling stage had started (its stage.json names the old weights) but labeled nothing.
    assert "round1/pseudo_labels was started with another setup (teacher_weights_sha256" in log


def test_a_stage_that_refuses_its_input_records_no_setup(tiny_world, tmp_path):
    # Found when the teacher's trainer loads MODEL.WEIGHTS, after its stage.json was written.
    output_dir = tmp_path / "exp"
    missing = "['MODEL.WEIGHTS', '/no/such/teacher_init.pth']"
    argv = ["--config", EXPERIMENT, "OUTPUT_DIR", str(output_dir)]
    args = experiment_run.self_training_argument_parser().parse_args(
        [*argv, "SSDET.EXPERIMENT.TEACHER_OPTS", missing]
    )
    with pytest.raises(InputError, match="teacher_init.pth"):
        run_self_training(args)
    assert (output_dir / "teacher").is_dir()
    assert not (output_dir / "teacher" / "stage.json").exists()
