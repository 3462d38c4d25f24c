"""Tests of the one-command self-training experiment (tools/self_train.py) on the tiny world:
every stage end to end, the plain student checkpoint, rerun, resume, rounds, the equal-compute
control and bad input."""

import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ssdet.checkpoint.backbone_init import check_init_config
from ssdet.data.labeling import ImageListing
from ssdet.data.pseudo_labels import file_sha256, read_metadata
from ssdet.engine.defaults import load_cfg
from ssdet.engine.experiment import (
    format_self_training_table,
    plan_experiment,
    run_self_training,
    self_training_argument_parser,
)
from ssdet.engine.student import SimpleStudentTrainer
from ssdet.utils.errors import InputError

from ...conftest import REPO

EXPERIMENT = os.path.join(
    REPO, "configs", "mini", "retinanet_R18_FPN_S1_self_train_instant_test.yaml"
)
ROUND1 = ("teacher", "round1/pseudo_labels", "round1/student")
# The files whose modification time shows whether a stage ran again.
STAGE_OUTPUTS = (
    "teacher/model_final.pth",
    "teacher/final_metrics.json",
    "round1/pseudo_labels/store/metadata.json",
    "round1/student/model_final.pth",
    "round1/student/final_metrics.json",
)


# A tool run by a test of this module: one torch thread, as the module's in-process runs.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def self_train(output_dir, *opts, rounds=None) -> dict:
    argv = ["--config", EXPERIMENT, *(["--rounds", str(rounds)] if rounds else [])]
    args = self_training_argument_parser().parse_args([*argv, "OUTPUT_DIR", str(output_dir), *opts])
    return run_self_training(args)


def self_train_tool(output_dir) -> subprocess.CompletedProcess:
    """tools/self_train.py on the experiment config, in a new process; it must succeed.

    With one torch thread, as this module's own runs (``one_thread``): the same thread count is
    what makes a run in another process compute the same weights.
    """
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "self_train.py"), "--config", EXPERIMENT]
        + ["OUTPUT_DIR", output_dir],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=ONE_THREAD_ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_json(path):
    with open(path) as f:
        return json.load(f)


def mtimes(output_dir, names=STAGE_OUTPUTS) -> dict[str, int]:
    return {name: os.stat(os.path.join(output_dir, name)).st_mtime_ns for name in names}


@pytest.fixture(scope="module")
def experiment(tiny_world, tmp_path_factory):
    """One finished one-round experiment (teacher trained, pseudo labels, student).

    What it printed is in ``stdout.txt`` next to the experiment's folder (see :func:`printed`).
    """
    output_dir = tmp_path_factory.mktemp("self_train") / "exp"
    stdout = io.StringIO()
    try:
        # The loggers' stdout handlers are made during the run, so they write here too.
        with contextlib.redirect_stdout(stdout):
            record = self_train(output_dir)
    finally:
        (output_dir.parent / "stdout.txt").write_text(stdout.getvalue())
    return str(output_dir), record


def printed(experiment) -> str:
    return open(os.path.join(os.path.dirname(experiment[0]), "stdout.txt")).read()


def copy_experiment(experiment, tmp_path) -> str:
    """A copy of the finished experiment (modification times kept) that a test may change."""
    copy = str(tmp_path / "exp")
    shutil.copytree(experiment[0], copy)
    return copy


def test_every_stage_in_its_folder_and_the_summary(experiment):
    output_dir, record = experiment
    for stage in ROUND1:
        assert os.path.isfile(os.path.join(output_dir, stage, "stage.json")), stage
    teacher = read_json(os.path.join(output_dir, "teacher", "final_metrics.json"))
    student = read_json(os.path.join(output_dir, "round1", "student", "final_metrics.json"))
    assert read_json(os.path.join(output_dir, "final_metrics.json")) == record

    # write_final_metrics' schema, with the last student's results, plus the teacher's.
    assert record["results"] == student["results"] == record["rounds"][0]
    assert record["teacher"] == teacher["results"]
    assert record["stages"] == list(ROUND1)
    assert record["seed"] == 0 and record["wall_time_s"] > 0
    assert record["config_file"] == EXPERIMENT
    # Teacher and student trained 20 steps of 4 images: the teacher is the equal-compute control.
    control = {"stage": "teacher", "steps": 20, "results": record["teacher"]}
    assert record["control"] == {
        **control,
        "why": "same schedule",
        "differs_from_student": {},
        "rounds": [control],
    }
    log = open(os.path.join(output_dir, "log.txt")).read().splitlines()
    assert log[-1].endswith(
        "equal-compute control: the teacher (same schedule: 20 steps of 4 images, as the student)"
    )
    for results in (record["teacher"], record["results"]):
        box = results["mini_coco_val"]["bbox"]
        assert set(box) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(v is None or 0 <= v <= 100 for v in box.values())

    # The teacher labeled the unlabeled images with its final weights; the student trained on
    # that store (mixed batches) from its own init, not from the teacher.
    store = os.path.join(output_dir, "round1", "pseudo_labels", "store")
    metadata = read_metadata(store)
    assert metadata["teacher"]["weights_sha256"] == file_sha256(
        os.path.join(output_dir, "teacher", "model_final.pth")
    )
    unlabeled = len(ImageListing.from_input("mini_imagenet_train"))
    assert metadata["listing"]["size"] == unlabeled
    counts = record["pseudo_labels"][0]
    assert counts["images"] == unlabeled
    assert 0 < counts["boxes"] <= 10 * counts["images_with_boxes"]
    student_cfg = load_cfg(os.path.join(output_dir, "round1", "student", "config.yaml"))
    assert student_cfg.SSDET.PSEUDO_LABELS.STORE == store
    assert student_cfg.MODEL.WEIGHTS == ""
    metrics = os.path.join(output_dir, "round1", "student", "metrics.json")
    records = [json.loads(line) for line in open(metrics)]
    assert any("loss_pseudo" in r for r in records)
    # The command line reached every stage; the teacher has its own overrides too.
    teacher_cfg = load_cfg(os.path.join(output_dir, "teacher", "config.yaml"))
    assert teacher_cfg.SOLVER.BASE_LR == 0.02 and teacher_cfg.SOLVER.MAX_ITER == 20
    assert teacher_cfg.DATASETS.TEST == student_cfg.DATASETS.TEST


def test_environment_and_config_are_printed_once_per_experiment(experiment):
    output = printed(experiment)
    assert "teacher" in output and "round1/student" in output  # every stage's lines are here
    # Detectron2's default_setup prints them in every stage; the experiment prints them once.
    assert output.count("Environment info:") == 1
    assert output.count("Running with full config:") == 1
    assert "Contents of args.config_file" not in output
    # Each stage's log.txt still records its own environment and config, as plain text.
    for log in [os.path.join(experiment[0], stage, "log.txt") for stage in ("", *ROUND1)]:
        text = open(log).read()
        assert text.count("Environment info:") == 1, log
        assert text.count("Running with full config:") == 1, log
        assert "\x1b[" not in text, log


def test_final_checkpoint_loads_into_a_stock_detectron2_model(experiment):
    output_dir, record = experiment
    checkpoint = torch.load(os.path.join(output_dir, record["checkpoint"]), weights_only=True)
    assert set(checkpoint) == {"model"}
    cfg = load_cfg(EXPERIMENT, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    incompatible = model.load_state_dict(checkpoint["model"], strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    # The last student's weights.
    student = torch.load(
        os.path.join(output_dir, "round1", "student", "model_final.pth"), weights_only=True
    )
    assert all(torch.equal(v, student["model"][k]) for k, v in checkpoint["model"].items())
    # Its config for stock Detectron2 is beside it (tests/tools/test_train_net.py runs one in a
    # process without ssdet).
    stock = get_cfg()
    stock.merge_from_file(os.path.join(output_dir, record["detectron2_config"]))
    assert stock.MODEL.WEIGHTS == os.path.join(output_dir, record["checkpoint"])
    assert stock.MODEL.BACKBONE.NAME == "build_retinanet_resnet_any_width_fpn_backbone"
    assert os.path.isfile(os.path.join(output_dir, "any_width_resnet.py"))
    build_model(stock).load_state_dict(checkpoint["model"], strict=True)


def test_rerun_skips_every_finished_stage(experiment):
    output_dir, record = experiment
    before = mtimes(output_dir)
    proc = self_train_tool(output_dir)
    for stage in ROUND1:
        assert f"skipping {stage}: finished" in proc.stdout
    assert "Starting training" not in proc.stdout + proc.stderr
    assert mtimes(output_dir) == before
    assert "| teacher |" in proc.stdout and "| student (round 1) |" in proc.stdout
    assert "| control (teacher, 20 steps) |" in proc.stdout
    # The teacher is the control: the student's two differences are one.
    differences = re.search(
        r"student - teacher: (\S+) AP, student - control: (\S+) AP", proc.stdout
    )
    assert differences and differences[1] == differences[2]
    again = read_json(os.path.join(output_dir, "final_metrics.json"))
    assert again == record, "the summary of a finished experiment changed"


def test_interrupted_student_resumes_from_its_last_checkpoint(experiment, tmp_path, monkeypatch):
    output_dir = copy_experiment(experiment, tmp_path)
    student_dir = os.path.join(output_dir, "round1", "student")
    shutil.rmtree(student_dir)
    for name in ("final_metrics.json", "model_final.pth"):
        os.remove(os.path.join(output_dir, name))
    upstream = [name for name in STAGE_OUTPUTS if not name.startswith("round1/student")]
    before = mtimes(output_dir, upstream)

    run_step = SimpleStudentTrainer.run_step

    def killed_at_12(self):
        if self.iter == 12:
            raise RuntimeError("killed")
        run_step(self)

    monkeypatch.setattr(SimpleStudentTrainer, "run_step", killed_at_12)
    with pytest.raises(RuntimeError, match="killed"):
        self_train(output_dir)
    monkeypatch.undo()
    assert open(os.path.join(student_dir, "last_checkpoint")).read() == "model_0000009.pth"
    assert not os.path.exists(os.path.join(student_dir, "final_metrics.json"))
    assert not os.path.exists(os.path.join(output_dir, "final_metrics.json"))

    record = self_train(output_dir)
    log = open(os.path.join(student_dir, "log.txt")).read()
    assert "Starting training from iteration 10" in log
    assert log.count("Starting training from iteration") == 2
    assert (
        read_json(os.path.join(student_dir, "final_metrics.json"))["results"] == record["results"]
    )
    assert mtimes(output_dir, upstream) == before, "the teacher or the labeling ran again"


def test_stage_whose_final_checkpoint_does_not_load_is_not_finished(experiment, tmp_path):
    output_dir = copy_experiment(experiment, tmp_path)
    teacher_final = os.path.join(output_dir, "teacher", "model_final.pth")
    written = file_sha256(teacher_final)
    open(teacher_final, "wb").close()  # what a kill while Detectron2 wrote it in place left
    downstream = [name for name in STAGE_OUTPUTS if not name.startswith("teacher/")]
    before = mtimes(output_dir, downstream)
    record = self_train(output_dir)
    log = open(os.path.join(output_dir, "teacher", "log.txt")).read()
    assert "names model_final.pth, which does not load: resuming from model_0000019.pth" in log
    # Nothing was left to train: the final checkpoint is written again from the last periodic
    # one, byte for byte, so the pseudo labels and the student made from it stay valid.
    assert file_sha256(teacher_final) == written
    assert mtimes(output_dir, downstream) == before
    assert record["teacher"] == experiment[1]["teacher"]
    assert record["results"] == experiment[1]["results"]


def test_second_round_is_taught_by_the_first_student(experiment, tmp_path):
    output_dir = copy_experiment(experiment, tmp_path)
    before = mtimes(output_dir)
    record = self_train(output_dir, rounds=2)
    assert mtimes(output_dir) == before, "round 1 ran again"
    assert record["stages"] == [*ROUND1, "round2/pseudo_labels", "round2/student"]
    metadata = read_metadata(os.path.join(output_dir, "round2", "pseudo_labels", "store"))
    assert metadata["teacher"]["weights_sha256"] == file_sha256(
        os.path.join(output_dir, "round1", "student", "model_final.pth")
    )
    round2 = read_json(os.path.join(output_dir, "round2", "student", "final_metrics.json"))
    assert record["results"] == record["rounds"][1] == round2["results"]
    assert record["rounds"][0] == experiment[1]["results"]
    assert len(record["pseudo_labels"]) == 2


def test_given_teacher_is_evaluated_and_no_pseudo_box_is_a_clear_error(experiment, tmp_path):
    teacher = os.path.join(experiment[0], "teacher", "model_final.pth")
    output_dir = tmp_path / "exp"
    opts = ["SSDET.EXPERIMENT.TEACHER_WEIGHTS", teacher, "SSDET.PSEUDO_LABELS.SCORE_THRESH", "0.99"]
    with pytest.raises(InputError, match=r"SCORE_THRESH 0\.99.*train the teacher longer"):
        self_train(output_dir, *opts)
    # The given teacher was evaluated (not trained): the trained teacher's AP on the same weights.
    evaluated = read_json(output_dir / "teacher" / "final_metrics.json")["results"]
    assert not (output_dir / "teacher" / "model_final.pth").exists()
    ap = experiment[1]["teacher"]["mini_coco_val"]["bbox"]["AP"]
    assert evaluated["mini_coco_val"]["bbox"]["AP"] == pytest.approx(ap, abs=1e-6)
    assert not (output_dir / "round1" / "student").exists()


@pytest.mark.parametrize(
    "opts,message",
    [
        (["SOLVER.WARMUP_ITERS", "3"], r"Stage teacher .* SOLVER.WARMUP_ITERS 5 -> 3"),
        # The teacher's TEACHER_OPTS hold against the command line: only the student changed.
        (["SOLVER.BASE_LR", "0.01"], r"Stage round1/student .* SOLVER.BASE_LR 0.02 -> 0.01"),
        # The student's filter changes the student only: the pseudo labels are reused.
        (
            ["SSDET.PSEUDO_LABELS.SCORE_THRESH", "0.2"],
            r"Stage round1/student .* SSDET.PSEUDO_LABELS.SCORE_THRESH 0.1 -> 0.2",
        ),
    ],
)
def test_stage_of_another_setup_is_refused(experiment, tmp_path, opts, message):
    output_dir = copy_experiment(experiment, tmp_path)
    with pytest.raises(InputError, match=message):
        self_train(output_dir, *opts)


@pytest.mark.parametrize(
    "opts,message",
    [
        (
            ["SSDET.EXPERIMENT.TEACHER_CONFIG", "nope.yaml"],
            "Teacher config .*nope.yaml.* not found",
        ),
        (["SSDET.EXPERIMENT.TEACHER_CONFIG", ""], "TEACHER_CONFIG is empty"),
        (
            ["SSDET.EXPERIMENT.UNLABELED_DATASET", "no_such_set"],
            "'no_such_set' is neither a folder nor a registered dataset",
        ),
        (["SSDET.EXPERIMENT.TEACHER_WEIGHTS", "/no/such.pth"], "TEACHER_WEIGHTS .* not found"),
        (["SSDET.EXPERIMENT.STUDENT_INIT", "imagenet"], "valid: config, teacher"),
        (["SSDET.EXPERIMENT.CONTROL", "teacher"], "CONTROL 'teacher'; valid: auto, none"),
        (["SSDET.EXPERIMENT.TEACHER_OPTS", "['SOLVER.MAX_ITER']"], "KEY VALUE pairs"),
        (["SSDET.EXPERIMENT.TEACHER_OPTS", "['NO.SUCH_KEY', 1]"], "Bad config"),
    ],
)
def test_bad_experiment_input_is_an_input_error(tiny_world, opts, message):
    with pytest.raises(InputError, match=message):
        plan_experiment(EXPERIMENT, ["OUTPUT_DIR", "output/unused", *opts])


def test_bad_rounds_and_modes(tiny_world):
    with pytest.raises(InputError, match=">= 1"):
        plan_experiment(EXPERIMENT, [], rounds=0)
    args = self_training_argument_parser().parse_args(["--config", EXPERIMENT, "--eval-only"])
    with pytest.raises(InputError, match="tools/train_net.py --eval-only"):
        run_self_training(args)


def test_teacher_next_to_the_experiment_with_other_classes(tiny_world, tmp_path):
    """TEACHER_CONFIG is found next to the experiment config; its classes must be the student's."""
    instant = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")
    (tmp_path / "teacher.yaml").write_text(
        f"_BASE_: {instant!r}\nMODEL:\n  RETINANET:\n    NUM_CLASSES: 3\n"
    )
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        f"_BASE_: {EXPERIMENT!r}\nSSDET:\n  EXPERIMENT:\n    TEACHER_CONFIG: teacher.yaml\n"
    )
    with pytest.raises(InputError, match="NUM_CLASSES 3 but the student"):
        plan_experiment(str(experiment), ["OUTPUT_DIR", "output/unused"])


def test_plan_lays_out_the_rounds(tiny_world):
    opts = ["OUTPUT_DIR", "output/x", "SEED", "3", "SOLVER.BASE_LR", "0.05"]
    plan = plan_experiment(EXPERIMENT, opts, rounds=3)
    names = [stage.name for stage in plan.stages]
    assert names == ["teacher"] + [
        f"round{k}/{part}" for k in (1, 2, 3) for part in ("pseudo_labels", "student")
    ]
    # Each round is taught by the previous round's student; the command line reaches all stages.
    (label2, _), (label3, _) = plan.rounds[1], plan.rounds[2]
    assert label2.weights == os.path.join(plan.output_dir, "round1", "student", "model_final.pth")
    assert label3.weights == os.path.join(plan.output_dir, "round2", "student", "model_final.pth")
    assert all(stage.load_cfg().SEED == 3 for stage in plan.stages)
    # TEACHER_OPTS override the command line for the teacher (and its labeling config) only.
    assert plan.teacher.load_cfg().SOLVER.BASE_LR == 0.02
    assert plan.rounds[0][0].load_cfg().SOLVER.BASE_LR == 0.02
    assert plan.rounds[0][1].load_cfg().SOLVER.BASE_LR == 0.05
    assert plan.rounds[1][0].load_cfg().SOLVER.BASE_LR == 0.05


def test_student_from_a_pretrained_teacher_is_not_initialized_twice(tiny_world, tmp_path):
    """An ImageNet-Init experiment with STUDENT_INIT teacher: the teacher starts from the backbone
    init, the student from the teacher alone (the mini ablation grid's ImageNet cells)."""
    backbone = tmp_path / "backbone.pth"
    torch.save({"model": {}}, backbone)
    opts = ["OUTPUT_DIR", str(tmp_path / "x"), "SSDET.EXPERIMENT.STUDENT_INIT", "teacher"]
    opts += ["SSDET.INIT", "IMAGENET", "SSDET.INIT_WEIGHTS", str(backbone)]
    plan = plan_experiment(EXPERIMENT, opts, rounds=2)
    teacher = plan.teacher.load_cfg()
    assert (teacher.SSDET.INIT, teacher.MODEL.WEIGHTS) == ("IMAGENET", "")
    check_init_config(teacher)
    for k, (label, student) in enumerate(plan.rounds):
        cfg = student.load_cfg()
        assert cfg.MODEL.WEIGHTS == label.weights
        assert (cfg.SSDET.INIT, cfg.SSDET.INIT_WEIGHTS) == ("RAND", "")
        check_init_config(cfg)
        if k:
            assert label.weights.endswith(os.path.join("round1", "student", "model_final.pth"))


def test_the_teacher_of_the_students_schedule_is_the_control(tiny_world):
    """Teacher and student train 20 steps of 4 images: no control stage, in every round."""
    plan = plan_experiment(EXPERIMENT, ["OUTPUT_DIR", "output/x"], rounds=2)
    assert [stage.name for stage in plan.stages] == [
        "teacher",
        *(f"round{k}/{part}" for k in (1, 2) for part in ("pseudo_labels", "student")),
    ]
    assert plan.controls == (plan.teacher, plan.teacher)
    assert plan.control_why == "same schedule"
    assert plan.control_differences() == {}
    # Another policy for the teacher alone keeps it the control, named as a difference: the
    # student - control difference then includes the policy's effect.
    teacher_opts = "['SOLVER.BASE_LR', 0.02, 'SOLVER.MAX_ITER', 20, 'SSDET.AUGMENT.POLICY', 'S4']"
    opts = ["OUTPUT_DIR", "output/x", "SSDET.EXPERIMENT.TEACHER_OPTS", teacher_opts]
    plan = plan_experiment(EXPERIMENT, opts)
    assert plan.controls == (plan.teacher,)
    assert plan.control_differences() == {"SSDET.AUGMENT.POLICY": ["S4", "S1"]}


def test_a_longer_student_gets_a_control_stage_of_its_steps(tiny_world, tmp_path):
    """The teacher's config (with its TEACHER_OPTS) for the student's 40 steps, once for all
    rounds, after the last student."""
    opts = ["OUTPUT_DIR", str(tmp_path / "x"), "SOLVER.MAX_ITER", "40", "SEED", "3"]
    plan = plan_experiment(EXPERIMENT, opts, rounds=2)
    names = [stage.name for stage in plan.stages]
    assert names == [
        "teacher",
        *(f"round{k}/{part}" for k in (1, 2) for part in ("pseudo_labels", "student")),
        "control",
    ]
    control = plan.stages[-1]
    assert plan.controls == (control, control)
    assert (control.kind, control.output_dir) == ("train", os.path.join(plan.output_dir, "control"))
    assert control.config_file == plan.teacher.config_file
    assert "20 steps of 4 images, the student 40 of 4" in plan.control_why
    cfg, teacher = control.load_cfg(), plan.teacher.load_cfg()
    assert (cfg.SOLVER.MAX_ITER, teacher.SOLVER.MAX_ITER) == (40, 20)
    assert cfg.OUTPUT_DIR == control.output_dir
    assert cfg.SEED == 3 and not cfg.SSDET.PSEUDO_LABELS.STORE
    # Only the schedule's length is the student's: the rest (learning rate, warmup, LR steps,
    # images per step) is the teacher's, unscaled.
    cfg.SOLVER.MAX_ITER, cfg.OUTPUT_DIR = teacher.SOLVER.MAX_ITER, teacher.OUTPUT_DIR
    assert cfg == teacher
    assert plan.control_differences() == {}

    # A given teacher was not trained here: a control stage even for the same schedule.
    weights = tmp_path / "teacher.pth"
    # The plan checks that given weights fit the teacher's model: a model of its config's.
    torch.save({"model": build_model(plan.teacher.load_cfg()).state_dict()}, weights)
    plan = plan_experiment(
        EXPERIMENT, [*opts[:2], "SSDET.EXPERIMENT.TEACHER_WEIGHTS", str(weights)]
    )
    assert [stage.name for stage in plan.stages][-1] == "control"
    assert plan.controls[0].load_cfg().SOLVER.MAX_ITER == 20
    assert "TEACHER_WEIGHTS" in plan.control_why


def test_a_student_from_its_teacher_is_compared_with_the_teachers_continuation(tiny_world):
    """STUDENT_INIT teacher: per round, the student's config with no pseudo labels, from the
    weights the student starts from, right after that student."""
    opts = ["OUTPUT_DIR", "output/x", "SSDET.EXPERIMENT.STUDENT_INIT", "teacher"]
    plan = plan_experiment(EXPERIMENT, [*opts, "SOLVER.MAX_ITER", "40"], rounds=2)
    assert [stage.name for stage in plan.stages] == [
        "teacher",
        *(f"round{k}/{p}" for k in (1, 2) for p in ("pseudo_labels", "student", "continuation")),
    ]
    for (label, student), continuation in zip(plan.rounds, plan.controls, strict=True):
        cfg, student_cfg = continuation.load_cfg(), student.load_cfg()
        assert continuation.kind == "train" and continuation.config_file == EXPERIMENT
        assert cfg.SSDET.PSEUDO_LABELS.STORE == "" and student_cfg.SSDET.PSEUDO_LABELS.STORE
        assert cfg.MODEL.WEIGHTS == student_cfg.MODEL.WEIGHTS == label.weights
        assert (cfg.SSDET.INIT, cfg.SSDET.INIT_WEIGHTS) == ("RAND", "")
        check_init_config(cfg)
        assert cfg.SOLVER == student_cfg.SOLVER and cfg.SOLVER.MAX_ITER == 40
        # The config's noise keys are the student's; the store-less Trainer does not add noise.
        assert cfg.SSDET.NOISE == student_cfg.SSDET.NOISE
    assert plan.rounds[1][0].weights == os.path.join(
        plan.rounds[0][1].output_dir, "model_final.pth"
    )
    assert plan.control_differences() == {}
    assert "STUDENT_INIT teacher" in plan.control_why


@pytest.mark.parametrize("student_init", ["config", "teacher"])
def test_control_none_plans_no_control(tiny_world, student_init):
    opts = ["OUTPUT_DIR", "output/x", "SSDET.EXPERIMENT.STUDENT_INIT", student_init]
    opts += ["SOLVER.MAX_ITER", "40", "SSDET.EXPERIMENT.CONTROL", "none"]
    plan = plan_experiment(EXPERIMENT, opts)
    assert [stage.name for stage in plan.stages] == list(ROUND1)
    assert plan.controls == () and plan.control_differences() == {}


def test_the_table_has_the_control_row_and_both_differences():
    def results(ap):
        return {"mini_coco_val": {"bbox": {"AP": ap, "AP50": 2 * ap}}}

    teacher, rounds = results(10.0), [results(12.0), results(13.5)]
    control = {
        "stage": "control",
        "steps": 40,
        "results": results(11.0),
        "rounds": [{"stage": "control", "steps": 40, "results": results(11.0)}] * 2,
    }
    table = format_self_training_table(teacher, rounds, control)
    assert table.count("| control (control, 40 steps) | 11.0 | 22.0 |") == 1
    assert table.endswith("student - teacher: +3.5 AP, student - control: +2.5 AP")
    table = format_self_training_table(teacher, rounds, None)
    assert "| control" not in table
    assert table.endswith("student - teacher: +3.5 AP, no equal-compute control")


def test_continuation_trains_after_the_student_and_is_skipped_when_finished(experiment, tmp_path):
    """STUDENT_INIT teacher end to end: round1/continuation, a supervised run of the student's
    20 steps from the teacher's weights, runs after the student; a rerun skips it."""
    output_dir = copy_experiment(experiment, tmp_path)
    shutil.rmtree(os.path.join(output_dir, "round1", "student"))
    upstream = [name for name in STAGE_OUTPUTS if not name.startswith("round1/student")]
    before = mtimes(output_dir, upstream)
    record = self_train(output_dir, "SSDET.EXPERIMENT.STUDENT_INIT", "teacher")
    assert mtimes(output_dir, upstream) == before, "the teacher or the labeling ran again"
    assert record["stages"] == [*ROUND1, "round1/continuation"]

    continuation = os.path.join(output_dir, "round1", "continuation")
    cfg = load_cfg(os.path.join(continuation, "config.yaml"))
    assert cfg.SSDET.PSEUDO_LABELS.STORE == ""
    assert cfg.MODEL.WEIGHTS == os.path.join(output_dir, "teacher", "model_final.pth")

    def iterations(stage):
        records = [json.loads(line) for line in open(os.path.join(stage, "metrics.json"))]
        return records, max(r["iteration"] for r in records if "iteration" in r)

    metrics, steps = iterations(continuation)
    assert not any("loss_pseudo" in r for r in metrics)
    assert steps == iterations(os.path.join(output_dir, "round1", "student"))[1]
    assert (
        "Starting training from iteration 0" in open(os.path.join(continuation, "log.txt")).read()
    )
    done = mtimes(
        output_dir, ["round1/student/final_metrics.json", "round1/continuation/final_metrics.json"]
    )
    assert (
        done["round1/student/final_metrics.json"] <= done["round1/continuation/final_metrics.json"]
    )

    results = read_json(os.path.join(continuation, "final_metrics.json"))["results"]
    assert record["control"]["stage"] == "round1/continuation"
    assert (record["control"]["steps"], record["control"]["results"]) == (20, results)
    assert record["control"]["differs_from_student"] == {}
    log = open(os.path.join(output_dir, "log.txt")).read()
    assert "equal-compute control: stage round1/continuation, one per round, not the teacher" in log

    finished = mtimes(output_dir, ["round1/continuation/final_metrics.json"])
    assert (
        self_train(output_dir, "SSDET.EXPERIMENT.STUDENT_INIT", "teacher")["control"]
        == (record["control"])
    )
    assert mtimes(output_dir, ["round1/continuation/final_metrics.json"]) == finished


def test_fcos_experiment_trains_teacher_labels_and_student(tiny_world, tmp_path):
    """FCOS from YAML through every stage: teacher, pseudo-labeling and the one-forward student."""
    fcos = os.path.join(REPO, "configs", "mini", "fcos_self_train_instant_test.yaml")
    args = self_training_argument_parser().parse_args(
        ["--config", fcos, "OUTPUT_DIR", str(tmp_path / "exp")]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        record = run_self_training(args)
    output_dir = str(tmp_path / "exp")
    assert record["stages"] == list(ROUND1)
    for stage in ("teacher", "round1/student"):
        cfg = get_cfg()
        cfg.set_new_allowed(True)
        cfg.merge_from_file(os.path.join(output_dir, stage, "config.yaml"))
        assert cfg.MODEL.META_ARCHITECTURE == "SsdetFCOS", stage
    store = read_metadata(os.path.join(output_dir, "round1", "pseudo_labels", "store"))
    assert store["counts"]["boxes"] > 0
    assert 0 <= record["teacher"]["mini_coco_val"]["bbox"]["AP"] <= 100
    # The student was evaluated. After its 20 steps from Rand Init an FCOS may still predict a
    # negative side for every box (seen on an AVX512 CPU): then it has no detection and
    # Detectron2 reports NaN (null) for every metric.
    student_ap = record["results"]["mini_coco_val"]["bbox"]["AP"]
    assert student_ap is None or 0 <= student_ap <= 100
    # The student's weights are an FCOS: its centerness branch is there and loads strictly.
    checkpoint = torch.load(os.path.join(output_dir, record["checkpoint"]), weights_only=True)
    assert "head.ctrness.weight" in checkpoint["model"]
    model = build_model(load_cfg(fcos, ["MODEL.DEVICE", "cpu"]))
    model.load_state_dict(checkpoint["model"], strict=True)


def test_student_killed_and_rerun_in_fresh_processes_is_the_same_student(experiment, tmp_path):
    # The experiment trained its student in the process that trained the teacher and labeled.
    # Here a new process trains it again, is killed (SIGKILL) after the student's first
    # checkpoint, and the rerun resumes it: the same weights, byte for byte. Nothing of the first
    # process (RNG, TorchScript's specialization, loaders) may reach the student.
    output_dir = copy_experiment(experiment, tmp_path)
    student = os.path.join("round1", "student")
    shutil.rmtree(os.path.join(output_dir, student))
    command = [sys.executable, os.path.join(REPO, "tools", "self_train.py"), "--config"]
    proc = subprocess.Popen(
        [*command, EXPERIMENT, "OUTPUT_DIR", output_dir],
        cwd=REPO,
        env=ONE_THREAD_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = os.path.join(output_dir, student, "model_0000009.pth")
    deadline = time.time() + 600
    while not os.path.exists(checkpoint) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.3))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(checkpoint), "the student stage never checkpointed"
    final = os.path.join(student, "model_final.pth")
    assert not os.path.exists(os.path.join(output_dir, final)), "the kill came too late to test"
    self_train_tool(output_dir)
    first = torch.load(os.path.join(experiment[0], final), weights_only=True)["model"]
    again = torch.load(os.path.join(output_dir, final), weights_only=True)["model"]
    assert [k for k in first if not torch.equal(first[k], again[k])] == []
