"""ssdet/engine/exact_resume.py: a run stopped anywhere and resumed ends byte-identical to the run
that was never stopped (detector, student, 2 processes killed with SIGKILL)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import torch
from detectron2.config import get_cfg

from ssdet.config import add_ssdet_config
from ssdet.engine import StudentTrainer, Trainer
from ssdet.engine.exact_resume import RANK_STATE_KEY

from ..conftest import REPO
from ..data.test_mixed import make_pseudo_store, student_cfg

INSTANT = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")
# Steps, a checkpoint every 3, and no evaluation: what is compared is the training.
SHORT = {"MAX_ITER": 9, "CHECKPOINT_PERIOD": 3}


def detector_cfg(output_dir):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(INSTANT)
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD = (
        SHORT["MAX_ITER"],
        SHORT["CHECKPOINT_PERIOD"],
    )
    return cfg


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def stopped_copy(run, tmp_path, iteration: int) -> str:
    """A run folder as a kill after the checkpoint of ``iteration`` leaves it."""
    out = tmp_path / f"stopped_at_{iteration}"
    out.mkdir()
    name = f"model_{iteration:07d}.pth"
    shutil.copy(os.path.join(run, name), out / name)
    (out / "last_checkpoint").write_text(name)
    return str(out)


def train(trainer_class, cfg, resume: bool):
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_detector_resumed_anywhere_ends_as_the_uninterrupted_run(tiny_world, tmp_path):
    full = detector_cfg(tmp_path / "full")
    train(Trainer, full, resume=False)
    final = os.path.join(full.OUTPUT_DIR, "model_final.pth")
    state = torch.load(final, map_location="cpu", weights_only=True)["trainer"]
    (rank0,) = json.loads(state[RANK_STATE_KEY])
    assert rank0["model"]["loss_normalizer"] > 0, "RetinaNet's normalizer is not saved"
    for iteration in (2, 5):
        resumed = train(
            Trainer, detector_cfg(stopped_copy(full.OUTPUT_DIR, tmp_path, iteration)), True
        )
        assert resumed.start_iter == iteration + 1
        assert_same_weights(os.path.join(resumed.cfg.OUTPUT_DIR, "model_final.pth"), final)


def test_student_resumed_ends_as_the_uninterrupted_run(tiny_world, tmp_path):
    def cfg_in(output_dir):
        cfg = student_cfg()
        cfg.SSDET.PSEUDO_LABELS.STORE = store
        cfg.DATASETS.TEST = ()
        cfg.OUTPUT_DIR = str(output_dir)
        cfg.SOLVER.MAX_ITER = 6
        cfg.SOLVER.CHECKPOINT_PERIOD = 2
        return cfg

    store = make_pseudo_store(tmp_path / "store")
    full = cfg_in(tmp_path / "full")
    trainer = train(StudentTrainer, full, resume=False)
    assert trainer._trainer.loss_weighting.averages is not None
    resumed = train(StudentTrainer, cfg_in(stopped_copy(full.OUTPUT_DIR, tmp_path, 3)), True)
    assert resumed.start_iter == 4
    final = os.path.join(full.OUTPUT_DIR, "model_final.pth")
    assert_same_weights(os.path.join(resumed.cfg.OUTPUT_DIR, "model_final.pth"), final)


def train_net(output_dir, *opts: str, kill_after: str | None = None) -> int:
    """tools/train_net.py with 2 processes; with ``kill_after``, SIGKILL its process group at a
    random moment after that checkpoint appears."""
    args = ["--config", INSTANT, "--num-gpus", "2", "OUTPUT_DIR", str(output_dir)]
    # Time enough after the checkpoint of iteration 2 for the kill to land before the end.
    args += ["TEST.EVAL_PERIOD", "0", "SOLVER.MAX_ITER", "18", "SOLVER.CHECKPOINT_PERIOD", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *opts, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if kill_after is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return proc.returncode
    deadline = time.time() + 600
    while not os.path.exists(os.path.join(output_dir, kill_after)) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.3))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    return proc.returncode


def test_two_processes_killed_with_sigkill_resume_byte_identical(tiny_world, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    train_net(full)
    train_net(killed, kill_after="model_0000002.pth")
    assert not os.path.exists(killed / "model_final.pth"), "the kill came too late to test"
    train_net(killed, "--resume")
    assert_same_weights(killed / "model_final.pth", full / "model_final.pth")
