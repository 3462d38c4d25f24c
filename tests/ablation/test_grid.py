"""Grid files: expansion, run names, exclusions, the command of each method, validation."""

import glob
import itertools
import os
import re
import shlex

import pytest
from detectron2.config import get_cfg

from ssdet.ablation import load_grid
from ssdet.ablation.grid import run_name
from ssdet.config import add_ssdet_config
from ssdet.utils.errors import InputError

from ..conftest import REPO
from .conftest import INSTANT

NAME = re.compile(r"^(rand|imagenet|simclr)_S[1-4]_f[0-9.]+_[a-z_]+_s[0-9]+$")


def pairs(opts) -> dict[str, str]:
    assert len(opts) % 2 == 0
    return dict(zip(opts[::2], opts[1::2], strict=True))


def test_expansion_is_the_cartesian_product_with_readable_unique_names(make_grid, tmp_path):
    grid = load_grid(make_grid())
    runs = grid.runs(str(tmp_path / "out"), "tools")
    assert len(runs) == 2 * 2 * 2 * 2 * 2
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    assert all(NAME.match(n) for n in names), names
    assert "rand_S1_f0.2_supervised_s0" in names
    assert "imagenet_S4_f1.0_self_training_s1" in names
    expected = {
        run_name(i, a, f, m, s)
        for i, a, f, m, s in itertools.product(
            ("rand", "imagenet"), ("S1", "S4"), (0.2, 1.0), ("supervised", "self_training"), (0, 1)
        )
    }
    assert set(names) == expected
    # Seed-major: every run of seed 0 before any of seed 1.
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)
    for r in runs:
        assert r.run_dir == os.path.join(str(tmp_path / "out"), r.name)
        assert r.cell == (r.init, r.augmentation, r.fraction, r.method)


def test_exclusions_and_all_three_without_rand_init(make_grid):
    axes = {
        "init": ["rand", "imagenet", "simclr"],
        "augmentation": ["S1", "S2", "S3", "S4"],
        "fraction": [0.2, 0.5, 1.0],
        "method": ["supervised", "self_training", "joint", "all_three"],
        "seed": [0],
    }
    exclude = [
        {"init": "simclr", "fraction": [0.2, 0.5]},
        {"method": ["joint", "all_three"], "augmentation": ["S1", "S2", "S3"]},
    ]
    grid = load_grid(
        make_grid(axes=axes, exclude=exclude, inits={"imagenet": "a.pth", "simclr": "b.pth"})
    )
    runs = grid.runs("out", "tools")
    kept = [
        (i, a, f, m)
        for i, a, f, m in itertools.product(
            axes["init"], axes["augmentation"], axes["fraction"], axes["method"]
        )
        if not (m == "all_three" and i == "rand")
        and not (i == "simclr" and f in (0.2, 0.5))
        and not (m in ("joint", "all_three") and a != "S4")
    ]
    assert sorted(r.name for r in runs) == sorted(run_name(*k, 0) for k in kept)
    assert not any(r.method == "all_three" and r.init == "rand" for r in runs)


def test_command_of_each_method(make_grid, base_configs):
    grid = load_grid(
        make_grid(
            axes={
                "init": ["rand", "imagenet"],
                "augmentation": ["S4"],
                "fraction": [0.5],
                "method": ["supervised", "self_training", "joint", "all_three"],
                "seed": [3],
            },
            opts=["SOLVER.MAX_ITER", 7],
            value_opts={"fraction": {0.5: ["SOLVER.BASE_LR", 0.5]}},
        )
    )
    runs = {r.name: r for r in grid.runs("out", "tools")}
    assert set(runs) == {
        "rand_S4_f0.5_supervised_s3",
        "imagenet_S4_f0.5_supervised_s3",
        "rand_S4_f0.5_self_training_s3",
        "imagenet_S4_f0.5_self_training_s3",
        "rand_S4_f0.5_joint_s3",
        "imagenet_S4_f0.5_joint_s3",
        "imagenet_S4_f0.5_all_three_s3",
    }
    tools = {
        "supervised": "train_net.py",
        "joint": "train_net.py",
        "self_training": "self_train.py",
        "all_three": "self_train.py",
    }
    for run in runs.values():
        cmd = run.command("PY")
        assert cmd[:3] == ["PY", os.path.join("tools", tools[run.method]), "--config"]
        base = "supervised" if run.method in ("supervised", "joint") else "self_training"
        assert cmd[3] == base_configs[base]
        assert cmd[4:6] == ["OUTPUT_DIR", os.path.join("out", run.name)]
        opts = pairs(cmd[6:])
        assert opts["SSDET.INIT"] == run.init.upper()
        # Always given: "" clears a base config's default weights for Rand Init.
        assert opts["SSDET.INIT_WEIGHTS"] == (
            base_configs["weights"] if run.init == "imagenet" else ""
        )
        assert opts["SSDET.AUGMENT.POLICY"] == "S4"
        assert opts["SSDET.DATA.LABELED_FRACTION"] == "0.5"
        assert opts["SEED"] == "3"
        assert opts["SSDET.DATA.SUBSET_SEED"] == "0"
        assert opts["SOLVER.MAX_ITER"] == "7" and opts["SOLVER.BASE_LR"] == "0.5"
        joint = run.method in ("joint", "all_three")
        student = run.method in ("self_training", "all_three")
        assert (opts.get("MODEL.META_ARCHITECTURE") == "JointRetinaNet") == joint
        assert (opts.get("SSDET.JOINT.SAMPLER_SEED") == "3") == joint
        assert (opts.get("SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY") == "S4") == student
        assert (opts.get("SSDET.SELF_TRAINING.SAMPLER_SEED") == "3") == student
        assert "SSDET.EXPERIMENT.TEACHER_WEIGHTS" not in opts
        # Only train_net takes --resume.
        assert ("--resume" in run.command("PY", resume=True)) == (
            tools[run.method] == "train_net.py"
        )
        assert run.command("PY", tool_args=["--num-gpus", "8"])[4:6] == ["--num-gpus", "8"]
        assert shlex.split(run.shell_command("PY")) == cmd


def test_opts_are_valid_config_overrides(make_grid):
    """Every run's overrides merge into the real config with the right types."""
    grid = load_grid(
        make_grid(
            axes={
                "init": ["rand", "imagenet"],
                "augmentation": ["S1"],
                "method": ["supervised", "self_training", "joint", "all_three", "control"],
            },
            reuse_teacher=True,
        )
    )
    for run in grid.runs("out", "tools"):
        cfg = get_cfg()
        add_ssdet_config(cfg)
        cfg.merge_from_file(run.config)
        cfg.merge_from_list(list(run.opts))
        assert cfg.SEED == run.seed == 0
        assert cfg.SSDET.DATA.LABELED_FRACTION == 1.0
        assert cfg.SSDET.INIT == run.init.upper()
        assert (cfg.SSDET.INIT_WEIGHTS == "") is (run.init == "rand")
        assert (cfg.MODEL.META_ARCHITECTURE == "JointRetinaNet") is (
            run.method in ("joint", "all_three")
        )
        assert cfg.SSDET.AUGMENT.POLICY == "S1"


def test_subset_seed_and_pseudo_policy_options(make_grid):
    grid = load_grid(make_grid(subset_seed="seed", pseudo_augment_policy="S4"))
    for run in grid.runs("out", "tools"):
        opts = pairs(run.opts)
        assert opts["SSDET.DATA.SUBSET_SEED"] == str(run.seed)
        if run.method == "self_training":
            assert opts["SSDET.SELF_TRAINING.PSEUDO_AUGMENT_POLICY"] == "S4"
    grid = load_grid(make_grid(subset_seed=5))
    assert {pairs(r.opts)["SSDET.DATA.SUBSET_SEED"] for r in grid.runs("out", "tools")} == {"5"}


def test_reuse_teacher(make_grid):
    grid = load_grid(
        make_grid(
            reuse_teacher=True,
            axes={
                "init": ["rand"],
                "augmentation": ["S1", "S4"],
                "method": ["self_training", "supervised"],
                "seed": [0, 1],
            },
        )
    )
    runs = grid.runs("out", "tools")
    position = {r.name: k for k, r in enumerate(runs)}
    for run in runs:
        if run.method != "self_training":
            assert run.needs == ()
            continue
        teacher = run_name(run.init, run.augmentation, run.fraction, "supervised", run.seed)
        weights = os.path.join("out", teacher, "model_final.pth")
        assert pairs(run.opts)["SSDET.EXPERIMENT.TEACHER_WEIGHTS"] == weights
        assert (weights, f"the teacher, from run {teacher}") in run.needs
        # Although the grid lists self_training first, each teacher runs before its student.
        assert position[teacher] < position[run.name]


def test_reuse_teacher_refuses_a_different_teacher(make_grid, base_configs, tmp_path):
    exp = tmp_path / "other_teacher.yaml"
    exp.write_text(
        f"_BASE_: {base_configs['self_training']}\n"
        "SSDET:\n  EXPERIMENT:\n    TEACHER_OPTS: ['SOLVER.BASE_LR', 0.02]\n"
    )
    methods = {
        "supervised": {"config": base_configs["supervised"]},
        "self_training": {"config": str(exp)},
    }
    with pytest.raises(InputError, match="TEACHER_OPTS"):
        load_grid(make_grid(reuse_teacher=True, methods=methods))
    load_grid(make_grid(reuse_teacher=False, methods=methods))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"axis": {}}, "Unknown key.*axis"),
        ({"axes": {"init": ["rand"], "augmentation": ["S1"]}}, "axes.method is missing"),
        (
            {"axes": {"init": ["imagenet21k"], "augmentation": ["S1"], "method": ["supervised"]}},
            "unknown value 'imagenet21k'",
        ),
        (
            {"axes": {"init": ["rand"], "augmentation": ["S5"], "method": ["supervised"]}},
            "unknown value 'S5'",
        ),
        (
            {"axes": {"init": ["rand"], "augmentation": ["S1"], "method": ["distill"]}},
            "unknown value 'distill'",
        ),
        (
            {"axes": {"init": ["rand"], "augmentation": ["S1", "S1"], "method": ["supervised"]}},
            "twice",
        ),
        (
            {
                "axes": {
                    "init": ["rand"],
                    "augmentation": ["S1"],
                    "method": ["supervised"],
                    "fraction": [0],
                }
            },
            r"\(0, 1\]",
        ),
        ({"inits": {}}, "inits.imagenet does not name"),
        ({"inits": {"rand": "x.pth", "imagenet": "y.pth"}}, "Rand Init has no weights"),
        (
            {"methods": {"supervised": {"config": INSTANT}}},
            "method 'self_training' is on the method axis",
        ),
        (
            {
                "methods": {
                    "supervised": {"config": "configs/nope.yaml"},
                    "self_training": {"config": "configs/nope.yaml"},
                }
            },
            "not found",
        ),
        ({"exclude": [{"seed": 7}]}, "7 is not on axis seed"),
        ({"exclude": [{"init": ["rand", "imagenet"]}]}, "no runs"),
        ({"value_opts": {"fraction": {0.3: ["SOLVER.MAX_ITER", 1]}}}, "0.3 is not on axis"),
        ({"opts": ["SOLVER.MAX_ITER"]}, "KEY, VALUE pairs"),
        ({"subset_seed": "random"}, "subset_seed"),
        ({"pseudo_augment_policy": "S9"}, "pseudo_augment_policy"),
        (
            {
                "reuse_teacher": True,
                "axes": {"init": ["rand"], "augmentation": ["S1"], "method": ["self_training"]},
            },
            "reuse_teacher needs",
        ),
    ],
)
def test_bad_grids_are_refused_with_a_message(make_grid, overrides, message):
    with pytest.raises(InputError, match=message):
        load_grid(make_grid(**overrides))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_grid(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("axes: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_grid(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_grid(str(bad))


@pytest.mark.parametrize(
    "path",
    sorted(glob.glob(os.path.join(REPO, "configs", "ablations", "*.yaml"))),
    ids=os.path.basename,
)
def test_shipped_grids_load(path, monkeypatch):
    monkeypatch.chdir(REPO)  # their paths are relative to the repository root
    grid = load_grid(os.path.relpath(path, REPO))
    runs = grid.runs("out", "tools")
    assert len({r.name for r in runs}) == len(runs) > 0
    if os.path.basename(path) == "mini.yaml":
        # init {rand, imagenet} x {S1, S4} x {supervised, self-training, control} x 2 seeds; the
        # paper's student trains its teacher's steps, so every control is its supervised run.
        assert len(runs) == 24
        assert sum(r.method == "control" for r in runs) == 8
    if os.path.basename(path) == "coco_full.yaml":
        assert len(runs) == 61  # the count its GPU-cost comment is computed for


CONTROL_AXES = {
    "init": ["rand", "imagenet"],
    "augmentation": ["S1", "S4"],
    "fraction": [0.2, 1.0],
    "method": ["control", "self_training", "supervised"],
    "seed": [0, 1],
}


def control_grid(make_grid, base_configs, student: str, **overrides):
    """A grid with the control, whose self-training method runs experiment ``student``."""
    methods = {
        "supervised": {"config": base_configs["supervised"]},
        "self_training": {"config": base_configs[student]},
    }
    return load_grid(make_grid(**{"axes": CONTROL_AXES, "methods": methods, **overrides}))


def resolved(run):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(run.config)
    cfg.merge_from_list(list(run.opts))
    return cfg


def test_control_of_a_student_from_its_own_init(make_grid, base_configs):
    """STUDENT_INIT config: the supervised run with the student's step count (the grid's
    value_opts apply to both: at 20% both train 9 steps, at 100% the student 60, the supervised
    run 40) and the supervised optimizer settings."""
    grid = control_grid(
        make_grid,
        base_configs,
        "self_training_longer",
        value_opts={"fraction": {0.2: ["SOLVER.MAX_ITER", 9]}},
        control_reuses_supervised=False,
    )
    runs = grid.runs("out", "tools")
    by_name = {r.name: r for r in runs}
    students = [r for r in runs if r.method == "self_training"]
    controls = [r for r in runs if r.method == "control"]
    assert len(students) == len(controls) == 2 * 2 * 2 * 2
    position = {r.name: k for k, r in enumerate(runs)}
    for student in students:
        name = run_name(
            student.init, student.augmentation, student.fraction, "control", student.seed
        )
        assert re.fullmatch(r"(rand|imagenet)_S[14]_f(0\.2|1\.0)_control_s[01]", name)
        control = by_name[name]
        supervised = by_name[student.name.replace("self_training", "supervised")]
        # Listed first on the axis, the controls still come after the runs they are built from.
        assert position[supervised.name] < position[student.name] < position[name]
        cmd = control.command("PY")
        assert cmd[:4] == [
            "PY",
            os.path.join("tools", "train_net.py"),
            "--config",
            supervised.config,
        ]
        assert cmd[4:6] == ["OUTPUT_DIR", os.path.join("out", name)]
        steps = 9 if student.fraction == 0.2 else 60
        # The supervised run's opts, each key once, the student's step count last.
        assert pairs(control.opts) == {**pairs(supervised.opts), "SOLVER.MAX_ITER": str(steps)}
        assert list(control.opts[-2:]) == ["SOLVER.MAX_ITER", str(steps)]
        assert len(control.opts) == 2 * len(pairs(control.opts))
        cfg, sup_cfg = resolved(control), resolved(supervised)
        assert cfg.SOLVER.MAX_ITER == resolved(student).SOLVER.MAX_ITER == steps
        assert cfg.SOLVER.BASE_LR == sup_cfg.SOLVER.BASE_LR
        assert cfg.SOLVER.WARMUP_ITERS == sup_cfg.SOLVER.WARMUP_ITERS
        assert cfg.SSDET.INIT == control.init.upper() and cfg.MODEL.WEIGHTS == ""
        assert control.needs == supervised.needs and control.results_from == ""
        assert control.resumable_by_flag and "--resume" in control.command("PY", resume=True)


def test_control_reuses_the_supervised_run_where_it_is_the_same_computation(
    make_grid, base_configs
):
    grid = control_grid(
        make_grid,
        base_configs,
        "self_training_longer",
        value_opts={"fraction": {0.2: ["SOLVER.MAX_ITER", 9]}},
    )
    assert grid.control_reuses_supervised  # the default
    for control in (r for r in grid.runs("out", "tools") if r.method == "control"):
        supervised = control.name.replace("control", "supervised")
        # Same steps at 20%: the supervised run's results; at 100% the student trains longer.
        assert control.results_from == (supervised if control.fraction == 0.2 else "")
        expected = os.path.join("out", supervised if control.fraction == 0.2 else control.name)
        assert control.results_dir == expected
        assert control.run_dir == os.path.join("out", control.name)
    # Not where the supervised run is excluded: the control then runs itself.
    grid = control_grid(
        make_grid,
        base_configs,
        "self_training",
        exclude=[{"method": "supervised", "init": "imagenet"}],
    )
    controls = [r for r in grid.runs("out", "tools") if r.method == "control"]
    assert {r.init for r in controls if r.results_from} == {"rand"}
    assert {r.init for r in controls if not r.results_from} == {"imagenet"}


def test_control_continues_the_teacher_with_the_students_schedule(make_grid, base_configs):
    """STUDENT_INIT teacher: train_net from the teacher's final weights with the student's SOLVER,
    on human-labeled data only, after the teacher's run."""
    for reuse_teacher in (True, False):
        grid = control_grid(
            make_grid,
            base_configs,
            "self_training_from_teacher",
            reuse_teacher=reuse_teacher,
            opts=["SOLVER.CHECKPOINT_PERIOD", 5],
        )
        runs = grid.runs("out", "tools")
        by_name = {r.name: r for r in runs}
        position = {r.name: k for k, r in enumerate(runs)}
        for control in (r for r in runs if r.method == "control"):
            student = by_name[control.name.replace("control", "self_training")]
            supervised = by_name[control.name.replace("control", "supervised")]
            teacher_run = supervised if reuse_teacher else student
            if reuse_teacher:
                teacher = os.path.join("out", supervised.name, "model_final.pth")
            else:  # the teacher stage of the self-training run
                teacher = os.path.join("out", student.name, "teacher", "model_final.pth")
            assert control.results_from == ""
            assert control.needs == ((teacher, f"the teacher, from run {teacher_run.name}"),)
            assert position[teacher_run.name] < position[control.name]
            cmd = control.command("PY")
            assert cmd[1] == os.path.join("tools", "train_net.py") and cmd[3] == supervised.config
            opts = pairs(cmd[6:])
            assert opts["MODEL.WEIGHTS"] == teacher
            assert opts["SSDET.INIT"] == "RAND" and opts["SSDET.INIT_WEIGHTS"] == ""
            assert opts["SOLVER.BASE_LR"] == "0.001"
            assert opts["SOLVER.WARMUP_ITERS"] == "2"
            assert opts["SOLVER.MAX_ITER"] == "30"
            assert opts["SOLVER.IMS_PER_BATCH"] == "8"
            for key in ("SSDET.AUGMENT.POLICY", "SSDET.DATA.LABELED_FRACTION", "SEED"):
                assert opts[key] == pairs(supervised.opts)[key]
            # Each key once, and no student-only keys: human-labeled data only.
            assert len(opts) == len(cmd[6:]) // 2
            assert not any(k.startswith(("SSDET.SELF_TRAINING", "SSDET.EXPERIMENT")) for k in opts)
            cfg = resolved(control)
            assert cfg.SOLVER == resolved(student).SOLVER
            assert cfg.SOLVER.CHECKPOINT_PERIOD == 5  # the grid's opts apply
            assert cfg.SSDET.INIT == "RAND" and cfg.SSDET.INIT_WEIGHTS == ""
            assert not cfg.SSDET.PSEUDO_LABELS.STORE and cfg.SSDET.NOISE.DROP_PATH_RATE == 0.0


def test_control_is_one_per_self_training_run(make_grid, base_configs):
    grid = control_grid(
        make_grid, base_configs, "self_training", exclude=[{"method": "self_training", "seed": 1}]
    )
    runs = grid.runs("out", "tools")
    assert {r.seed for r in runs if r.method == "control"} == {0}
    assert sum(r.method == "control" for r in runs) == sum(
        r.method == "self_training" for r in runs
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {
                "axes": {
                    "init": ["rand"],
                    "augmentation": ["S1"],
                    "method": ["supervised", "control"],
                }
            },
            "control method needs self_training on the method axis",
        ),
        (
            {"axes": {"init": ["rand"], "augmentation": ["S1"], "method": ["control"]}},
            "needs self_training and supervised",
        ),
        (
            {
                "axes": {
                    "init": ["rand"],
                    "augmentation": ["S1"],
                    "method": CONTROL_AXES["method"],
                },
                "methods": {
                    "supervised": {"config": INSTANT},
                    "self_training": {"config": INSTANT},
                    "control": {"config": INSTANT},
                },
            },
            "methods.control: the control method has no base config",
        ),
        (
            {"axes": CONTROL_AXES, "control_reuses_supervised": "yes"},
            "control_reuses_supervised must be true or false",
        ),
    ],
)
def test_bad_control_grids_are_refused(make_grid, overrides, message):
    with pytest.raises(InputError, match=message):
        load_grid(make_grid(**overrides))


def test_control_of_a_multi_round_continuation_is_refused(make_grid, base_configs, tmp_path):
    rounds = "SSDET:\n  EXPERIMENT:\n    ROUNDS: 2\n"
    from_teacher, from_config = tmp_path / "from_teacher_2.yaml", tmp_path / "from_config_2.yaml"
    from_teacher.write_text(f"_BASE_: {base_configs['self_training_from_teacher']}\n{rounds}")
    from_config.write_text(f"_BASE_: {base_configs['self_training']}\n{rounds}")
    configs = {**base_configs, "from_teacher": str(from_teacher), "from_config": str(from_config)}
    with pytest.raises(InputError, match="fine-tunes its teacher for 2 rounds"):
        control_grid(make_grid, configs, "from_teacher")
    # From its own init, every round's student trains its MAX_ITER steps: a control is defined.
    control_grid(make_grid, configs, "from_config")


def test_control_of_a_teacher_other_than_the_supervised_config_is_refused(
    make_grid, base_configs, tmp_path
):
    exp = tmp_path / "other_teacher.yaml"
    exp.write_text(
        f"_BASE_: {base_configs['self_training_from_teacher']}\n"
        "SSDET:\n  EXPERIMENT:\n    TEACHER_OPTS: ['SOLVER.BASE_LR', 0.02]\n"
    )
    base_configs = {**base_configs, "other_teacher": str(exp)}
    with pytest.raises(InputError, match="would continue the teacher of .* TEACHER_OPTS"):
        control_grid(make_grid, base_configs, "other_teacher")
    # From its own init the student does not depend on its teacher's config.
    exp.write_text(
        f"_BASE_: {base_configs['self_training']}\n"
        "SSDET:\n  EXPERIMENT:\n    TEACHER_OPTS: ['SOLVER.BASE_LR', 0.02]\n"
    )
    control_grid(make_grid, base_configs, "other_teacher")
