"""SIGTERM and Ctrl-C (SIGINT) stop a training tool after its current step, with a checkpoint of
that step that ``--resume`` continues from. (Issue 16, item 10.)"""

import os
import re
import signal
import time

import pytest
import torch

from ssdet.checkpoint import is_loadable_checkpoint

from ..conftest import REPO
from .harness import INSTANT, error_lines, finish, start_tool

PRETRAIN = os.path.join(REPO, "configs", "pretrain", "pretrain_instant_test.yaml")
# Long enough to be stopped in the middle; no periodic checkpoint or evaluation before the end.
SCHEDULE = ["SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0"]


def stop_when_logged(processes: dict, line: str) -> None:
    """Send each ``{output_dir: (process, signal)}`` its signal once the run's log.txt has
    ``line`` (Detectron2 logs every 20 steps)."""
    waiting = dict(processes)
    deadline = time.monotonic() + 300
    while waiting and time.monotonic() < deadline:
        for output_dir, (process, signum) in list(waiting.items()):
            log = os.path.join(output_dir, "log.txt")
            if process.poll() is not None:
                pytest.fail(f"{line!r} never appeared in {log} (exit code {process.poll()})")
            if os.path.isfile(log) and line in open(log).read():
                process.send_signal(signum)
                del waiting[output_dir]
        time.sleep(0.02)
    assert not waiting, f"{line!r} did not appear in time in {', '.join(waiting)}"


def check_stopped(returncode: int, output: str, output_dir: str, code: int, name: str) -> int:
    """The stop's exit code and one line; the checkpoint it names loads. Returns its iteration."""
    assert returncode == code, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("interrupted by")]
    assert len(lines) == 1 and not error_lines(output), output[-3000:]
    match = re.fullmatch(
        rf"interrupted by {name}: stopped; the last checkpoint is (\S+)\. Run the same "
        r"command with --resume to continue\.",
        lines[0],
    )
    assert match, lines[0]
    assert "Traceback" not in output, output[-3000:]
    checkpoint = match[1]
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        assert os.path.join(output_dir, f.read()) == checkpoint
    assert is_loadable_checkpoint(checkpoint)
    iteration = torch.load(checkpoint, weights_only=True)["iteration"]
    assert os.path.basename(checkpoint) == f"model_{iteration:07d}.pth"
    return iteration


# (tool, config, steps, signal, exit code): SIGTERM as a scheduler sends it, SIGINT as Ctrl-C.
RUNS = (
    ("train_net.py", INSTANT, 40, signal.SIGTERM, 143),
    ("pretrain.py", PRETRAIN, 100, signal.SIGINT, 130),
)


def test_a_signal_stops_training_with_a_checkpoint_that_resume_finishes(tiny_world, tmp_path):
    # Both tools at once: each run is mostly its start-up.
    args, processes = {}, {}
    for tool, config, steps, signum, _ in RUNS:
        out = str(tmp_path / tool)
        args[tool] = ["--config", config, "SOLVER.MAX_ITER", str(steps), *SCHEDULE]
        args[tool] += ["OUTPUT_DIR", out]
        processes[out] = (start_tool(tool, *args[tool]), signum)
    stop_when_logged(processes, " iter: 19 ")
    iterations = {}
    for tool, _, steps, signum, code in RUNS:
        out = str(tmp_path / tool)
        stopped = finish(processes[out][0])
        iterations[tool] = check_stopped(*stopped, out, code, signum.name)
        assert 19 <= iterations[tool] < steps - 1

    resumed = {tool: start_tool(tool, "--resume", *args[tool]) for tool, *_ in RUNS}
    for tool, process in resumed.items():
        returncode, output = finish(process)
        assert returncode == 0, output[-3000:]
        assert f"Starting training from iteration {iterations[tool] + 1}" in output
    out = tmp_path / "train_net.py"
    assert (out / "final_metrics.json").is_file()
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 39
    assert (tmp_path / "pretrain.py" / "pretrain_metrics.json").is_file()
