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
        assert (opts.get("SSDET.JOINT.ENABLED") == "True") == joint
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
                "method": ["supervised", "self_training", "joint", "all_three"],
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
        assert cfg.SSDET.JOINT.ENABLED is (run.method in ("joint", "all_three"))
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
        # The minimum: init {rand, imagenet} x {S1, S4} x {supervised, self-training} x 2.
        assert len(runs) == 16
    if os.path.basename(path) == "coco_full.yaml":
        assert len(runs) == 61  # the count its GPU-cost comment is computed for
