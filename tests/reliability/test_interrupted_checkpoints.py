"""A kill while a checkpoint or its tag is written never leaves an unresumable folder: the
states such a kill left behind (Detectron2 wrote both in place) resume with ``--resume``, from
the newest checkpoint that loads. (Issue 16, items 2 and 3.)"""

import hashlib
import os
import shutil

import pytest
import torch

from .harness import INSTANT, finish, start_tool

# 10 steps with a checkpoint every 5: model_0000004.pth, model_0000009.pth, model_final.pth.
SCHEDULE = ["SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "5", "SOLVER.STEPS", "(8,)"]


def train_net(output_dir: str, *args: str):
    return start_tool(
        "train_net.py", "--config", INSTANT, *args, *SCHEDULE, "OUTPUT_DIR", output_dir
    )


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def finished_run(tiny_world, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("finished") / "run")
    returncode, output = finish(train_net(out))
    assert returncode == 0, output[-3000:]
    return out


def test_killed_final_checkpoint_and_dangling_tag_resume(finished_run, tmp_path):
    # A kill while model_final.pth was written: the file is empty, the tag names the periodic
    # checkpoint of the same last iteration, and no metrics were written.
    killed_final = str(tmp_path / "killed_final")
    shutil.copytree(finished_run, killed_final)
    open(os.path.join(killed_final, "model_final.pth"), "wb").close()
    with open(os.path.join(killed_final, "last_checkpoint"), "w") as f:
        f.write("model_0000009.pth")
    os.remove(os.path.join(killed_final, "final_metrics.json"))
    # A kill while the tag was written (empty) after another left model_0000009.pth truncated:
    # only model_0000004.pth loads.
    empty_tag = str(tmp_path / "empty_tag")
    shutil.copytree(finished_run, empty_tag)
    for name in ("model_final.pth", "final_metrics.json"):
        os.remove(os.path.join(empty_tag, name))
    with open(os.path.join(finished_run, "model_0000009.pth"), "rb") as f:
        truncated = f.read(1000)
    with open(os.path.join(empty_tag, "model_0000009.pth"), "wb") as f:
        f.write(truncated)
    open(os.path.join(empty_tag, "last_checkpoint"), "w").close()

    processes = {out: train_net(out, "--resume") for out in (killed_final, empty_tag)}
    results = {out: finish(process) for out, process in processes.items()}
    for out, (returncode, output) in results.items():
        assert returncode == 0, output[-3000:]
        assert os.path.isfile(os.path.join(out, "final_metrics.json"))
        final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
        assert final["iteration"] == 9

    output = results[killed_final][1]
    assert (
        "model_final.pth is unloadable: writing it again from the checkpoint of iteration 9"
        in output
    )
    # Nothing was left to train: the rewritten file is the one the kill destroyed.
    assert sha256(os.path.join(killed_final, "model_final.pth")) == sha256(
        os.path.join(finished_run, "model_final.pth")
    )

    output = results[empty_tag][1]
    assert "last_checkpoint is empty: resuming from model_0000004.pth instead" in output
    assert "Starting training from iteration 5" in output
