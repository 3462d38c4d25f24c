"""No code runs from a user's file: a pickle that would run a command is refused with one
``error:`` line wherever ssdet reads weights, as are unreadable weights; a run on a folder that
another run holds is refused with the holder's PID. (Issue 16, items 1, 5 and 9; the config
files' YAML: tests/engine/test_defaults.py.)"""

import os
import re

import pytest

from ssdet.engine import Trainer, argument_parser, run_tool
from ssdet.engine.defaults import load_cfg
from ssdet.engine.experiment import run_self_training, self_training_argument_parser
from ssdet.engine.pseudo_labeling import build_teacher, prepare_labeling
from ssdet.utils.errors import InputError
from ssdet.utils.lock import output_dir_lock

from ..conftest import REPO
from ..engine.test_pseudo_labeling import _cfg
from .harness import INSTANT, error_lines, finish, start_tool

SELF_TRAIN = os.path.join(
    REPO, "configs", "mini", "retinanet_R18_FPN_S1_self_train_instant_test.yaml"
)


def test_eval_only_refuses_a_hostile_pickle_with_one_error_line(tiny_world, tmp_path, evil_pickle):
    weights, marker = evil_pickle
    process = start_tool(
        "train_net.py",
        *("--config", INSTANT, "--eval-only"),
        *("MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "out")),
    )
    returncode, output = finish(process)
    errors = error_lines(output)
    assert returncode == 1, output[-3000:]
    assert len(errors) == 1 and "calls posix.system" in errors[0], (errors, output[-3000:])
    assert "Traceback" not in output
    assert not os.path.exists(marker)


def test_fine_tuning_refuses_a_hostile_pickle(tiny_world, tmp_path, evil_pickle):
    weights, marker = evil_pickle
    cfg = load_cfg(INSTANT, ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(InputError, match="calls posix.system"):
        Trainer(cfg).resume_or_load(resume=False)
    assert not os.path.exists(marker)


def test_labeling_refuses_a_hostile_teacher(tiny_world, tmp_path, evil_pickle):
    weights, marker = evil_pickle
    cfg = _cfg(weights, str(tmp_path / "out"))
    with pytest.raises(InputError, match="calls posix.system"):
        prepare_labeling(cfg, "mini_imagenet_val", str(tmp_path / "out"))
    with pytest.raises(InputError, match="calls posix.system"):
        build_teacher(cfg)
    assert not os.path.exists(marker)


def test_self_training_refuses_a_hostile_teacher(tiny_world, tmp_path, evil_pickle):
    weights, marker = evil_pickle
    args = self_training_argument_parser().parse_args(
        ["--config", SELF_TRAIN, "OUTPUT_DIR", str(tmp_path / "exp")]
        + ["SSDET.EXPERIMENT.TEACHER_WEIGHTS", weights]
    )
    with pytest.raises(InputError, match="calls posix.system"):
        run_self_training(args)
    assert not os.path.exists(marker)


def test_a_run_on_a_held_folder_stops_naming_the_holder(tiny_world, tmp_path):
    held = str(tmp_path / "held")
    args = argument_parser().parse_args(["--config", INSTANT, "OUTPUT_DIR", held])

    def main(args):
        raise AssertionError("ran on a folder that another run holds")

    in_use = f"{held} is in use by another run: pid {os.getpid()} ("
    with output_dir_lock(held):
        with pytest.raises(SystemExit, match=f"^error: {re.escape(in_use)}"):
            run_tool(main, args, lock_output_dir=True)
        experiment = self_training_argument_parser().parse_args(
            ["--config", SELF_TRAIN, "OUTPUT_DIR", held]
        )
        with pytest.raises(InputError, match=re.escape(in_use)):
            run_self_training(experiment)
    assert os.listdir(held) == [".ssdet.lock"], "a refused run wrote into the folder"
