"""The sequential runner: skip finished runs, resume interrupted ones, keep going past failures,
one runner per folder, and a grid killed at any point finishes on rerun without redoing runs.

The runs here execute a stand-in for the tools (passed as the Python interpreter, the runner's
``python`` argument) that follows their contract: it writes ``last_checkpoint`` while training,
``final_metrics.json`` atomically at the end, and fails on an unknown config key; with
``FAKE_TOOL_MODEL`` it writes ``model_final.pth`` too, and as self_train its teacher stage's
``teacher/model_final.pth`` first. The real tools run in test_ablate_tool.py.
"""

import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from ssdet.ablation import GridRunner, Interrupted, load_grid
from ssdet.ablation.runner import STATUS_FILE, dry_run, is_finished, read_status
from ssdet.utils.errors import InputError
from ssdet.utils.lock import output_dir_lock

from ..conftest import REPO

FAKE_TOOL = """#!{python}
import json, os, sys, time
tool, args = os.path.basename(sys.argv[1]), sys.argv[2:]
k = args.index("OUTPUT_DIR")
out, opts = args[k + 1], dict(zip(args[k + 2::2], args[k + 3::2]))
started = time.time()
with open(os.environ["FAKE_TOOL_LOG"], "a") as f:
    f.write(json.dumps({{"tool": tool, "run": os.path.basename(out), "args": args,
                        "start": started, "omp": os.environ.get("OMP_NUM_THREADS")}}) + "\\n")
os.makedirs(out, exist_ok=True)
print("training", out, flush=True)
unknown = [key for key in opts if not key.isupper() or key.startswith("FAKE.")]
if unknown:
    print("error: Bad config: Non-existent config key: " + unknown[0], flush=True)
    sys.exit(1)
if tool == "self_train.py" and os.environ.get("FAKE_TOOL_MODEL"):
    os.makedirs(os.path.join(out, "teacher"), exist_ok=True)
    open(os.path.join(out, "teacher", "model_final.pth"), "w").close()
first = not os.path.exists(os.path.join(out, "last_checkpoint"))
with open(os.path.join(out, "last_checkpoint"), "w") as f:
    f.write("model_0000009.pth")
if first and os.path.basename(out) == os.environ.get("FAKE_TOOL_HANG"):
    with open(os.path.join(out, "pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(300)
time.sleep(float(os.environ.get("FAKE_TOOL_SECONDS", "0")))
if os.environ.get("FAKE_TOOL_MODEL"):
    open(os.path.join(out, "model_final.pth"), "w").close()
with open(os.path.join(out, "end"), "w") as f:
    f.write(str(time.time()))
seed = int(opts["SEED"])
ap = 10.0 + seed + (5.0 if opts["SSDET.INIT"] == "IMAGENET" else 0.0)
box = {{"AP": ap, "AP50": 2 * ap, "AP75": ap, "APs": 1.0, "APm": 2.0, "APl": None}}
with open(os.path.join(out, ".tmp"), "w") as f:
    json.dump({{"results": {{"mini_coco_val": {{"bbox": box}}}}, "seed": seed}}, f)
os.replace(os.path.join(out, ".tmp"), os.path.join(out, "final_metrics.json"))
"""


@pytest.fixture
def fake_python(tmp_path, monkeypatch) -> str:
    """The stand-in tool, used as the runner's Python interpreter; invocations go to a log."""
    path = tmp_path / "fake_python"
    path.write_text(FAKE_TOOL.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_TOOL_LOG", str(tmp_path / "invocations.jsonl"))
    return str(path)


def invocations(tmp_path) -> list[dict]:
    path = tmp_path / "invocations.jsonl"
    return [json.loads(line) for line in path.open()] if path.exists() else []


@pytest.fixture
def small_grid(make_grid):
    """rand / imagenet x S1 x supervised / self-training x seed 0: 4 runs."""
    return make_grid(
        axes={
            "init": ["rand", "imagenet"],
            "augmentation": ["S1"],
            "method": ["supervised", "self_training"],
        }
    )


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def wait_for(path: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} did not appear"
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.1)


def test_runs_skips_finished_and_resumes(small_grid, fake_python, tmp_path):
    out = str(tmp_path / "out")
    runs = load_grid(small_grid).runs(out, "tools")
    # One train_net run was interrupted after a checkpoint, one self-training run too.
    for name in ("rand_S1_f1.0_supervised_s0", "rand_S1_f1.0_self_training_s0"):
        os.makedirs(os.path.join(out, name))
        open(os.path.join(out, name, "last_checkpoint"), "w").close()

    summary = GridRunner(runs, out, fake_python).run()
    assert sorted(summary.done) == sorted(r.name for r in runs)
    assert summary.skipped == summary.failed == []
    calls = {c["run"]: c for c in invocations(tmp_path)}
    assert len(calls) == len(runs) == 4
    for run in runs:
        assert calls[run.name]["tool"] == os.path.basename(run.tool)
        resume = run.name == "rand_S1_f1.0_supervised_s0"
        assert calls[run.name]["args"] == run.command("PY", resume)[2:]
        assert os.path.isfile(os.path.join(run.run_dir, "final_metrics.json"))
        assert "training" in open(os.path.join(run.run_dir, "ablate.log")).read()
    # --resume for the interrupted train_net run only: self_train continues by itself.
    assert "--resume" in calls["rand_S1_f1.0_supervised_s0"]["args"]
    assert "--resume" not in calls["rand_S1_f1.0_self_training_s0"]["args"]
    assert "--resume" not in calls["imagenet_S1_f1.0_supervised_s0"]["args"]
    status = read_status(out)
    assert {s["state"] for s in status.values()} == {"done"}

    # Rerun: everything finished, nothing runs again.
    summary = GridRunner(runs, out, fake_python).run()
    assert sorted(summary.skipped) == sorted(r.name for r in runs)
    assert summary.done == summary.failed == []
    assert len(invocations(tmp_path)) == 4


def test_keeps_going_past_a_failed_run_and_retries_it(make_grid, fake_python, tmp_path):
    grid = make_grid(
        axes={"init": ["rand"], "augmentation": ["S1", "S2", "S4"], "method": ["supervised"]},
        value_opts={"augmentation": {"S2": ["FAKE.NO_SUCH_KEY", 1]}},
    )
    out = str(tmp_path / "out")
    runs = load_grid(grid).runs(out, "tools")
    summary = GridRunner(runs, out, fake_python).run()
    assert summary.failed == ["rand_S2_f1.0_supervised_s0"]
    assert summary.done == ["rand_S1_f1.0_supervised_s0", "rand_S4_f1.0_supervised_s0"]
    record = read_status(out)["rand_S2_f1.0_supervised_s0"]
    assert record["state"] == "failed" and record["returncode"] == 1
    assert "Non-existent config key: FAKE.NO_SUCH_KEY" in record["log_tail"][-1]
    assert record["log"].endswith(os.path.join("rand_S2_f1.0_supervised_s0", "ablate.log"))
    text = summary.format(read_status(out))
    assert "1 failed" in text and "FAILED rand_S2_f1.0_supervised_s0" in text

    # A rerun retries the failed run only.
    summary = GridRunner(runs, out, fake_python).run()
    assert summary.failed == ["rand_S2_f1.0_supervised_s0"] and len(summary.skipped) == 2
    assert [c["run"] for c in invocations(tmp_path)].count("rand_S2_f1.0_supervised_s0") == 2
    assert len(invocations(tmp_path)) == 4


def test_a_run_without_its_inputs_fails_without_starting(make_grid, fake_python, tmp_path):
    grid = make_grid(
        axes={"init": ["rand", "imagenet"], "augmentation": ["S1"], "method": ["supervised"]},
        inits={"imagenet": str(tmp_path / "not_pretrained_yet.pth")},
    )
    out = str(tmp_path / "out")
    summary = GridRunner(load_grid(grid).runs(out, "tools"), out, fake_python).run()
    assert summary.done == ["rand_S1_f1.0_supervised_s0"]
    assert summary.failed == ["imagenet_S1_f1.0_supervised_s0"]
    error = read_status(out)["imagenet_S1_f1.0_supervised_s0"]["error"]
    assert "not started" in error and "not_pretrained_yet.pth" in error
    assert [c["run"] for c in invocations(tmp_path)] == ["rand_S1_f1.0_supervised_s0"]


def test_reused_teacher_runs_first(make_grid, fake_python, tmp_path):
    grid = make_grid(
        axes={"init": ["rand"], "augmentation": ["S1"], "method": ["self_training", "supervised"]},
        reuse_teacher=True,
    )
    out = str(tmp_path / "out")
    # The fake tool writes no model_final.pth: the student finds no teacher and is not started.
    summary = GridRunner(load_grid(grid).runs(out, "tools"), out, fake_python).run()
    assert summary.done == ["rand_S1_f1.0_supervised_s0"]
    error = read_status(out)["rand_S1_f1.0_self_training_s0"]["error"]
    assert "the teacher, from run rand_S1_f1.0_supervised_s0" in error
    open(os.path.join(out, "rand_S1_f1.0_supervised_s0", "model_final.pth"), "w").close()
    summary = GridRunner(load_grid(grid).runs(out, "tools"), out, fake_python).run()
    assert summary.done == ["rand_S1_f1.0_self_training_s0"]


def test_jobs_run_side_by_side_and_a_student_waits_for_its_teacher(
    make_grid, fake_python, tmp_path, monkeypatch
):
    grid = make_grid(
        axes={
            "init": ["rand"],
            "augmentation": ["S1", "S4"],
            "method": ["self_training", "supervised"],
        },
        reuse_teacher=True,
    )
    monkeypatch.setenv("FAKE_TOOL_SECONDS", "1")
    monkeypatch.setenv("FAKE_TOOL_MODEL", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = str(tmp_path / "out")
    runs = load_grid(grid).runs(out, "tools")
    summary = GridRunner(runs, out, fake_python, jobs=2).run()
    assert sorted(summary.done) == sorted(r.name for r in runs) and len(runs) == 4
    calls = {c["run"]: c for c in invocations(tmp_path)}
    spans = {
        name: (c["start"], float(open(os.path.join(out, name, "end")).read()))
        for name, c in calls.items()
    }
    # Never more than 2 at a time, and 2 at a time at some point.
    most = max(sum(s <= t < e for s, e in spans.values()) for t, _ in spans.values())
    assert most == 2
    for aug in ("S1", "S4"):
        student, teacher = (
            spans[f"rand_{aug}_f1.0_self_training_s0"],
            spans[f"rand_{aug}_f1.0_supervised_s0"],
        )
        assert student[0] >= teacher[1]
    assert {c["omp"] for c in calls.values()} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert {s["state"] for s in read_status(out).values()} == {"done"}


def test_one_runner_per_output_folder(small_grid, fake_python, tmp_path):
    out = str(tmp_path / "out")
    runs = load_grid(small_grid).runs(out, "tools")
    with output_dir_lock(out):
        with pytest.raises(InputError, match=rf"in use by another run: pid {os.getpid()} "):
            GridRunner(runs, out, fake_python).run()
    assert invocations(tmp_path) == []
    assert GridRunner(runs, out, fake_python).run().done  # released


def test_sigterm_stops_the_run_and_a_rerun_resumes_it(
    small_grid, fake_python, tmp_path, monkeypatch
):
    out = str(tmp_path / "out")
    runs = load_grid(small_grid).runs(out, "tools")
    hung = runs[1].name
    monkeypatch.setenv("FAKE_TOOL_HANG", hung)
    pid_file = os.path.join(out, hung, "pid")

    def stop_when_hung():
        wait_for(pid_file)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    previous_handler = signal.getsignal(signal.SIGTERM)
    stopper = threading.Thread(target=stop_when_hung, daemon=True)
    stopper.start()
    with pytest.raises(Interrupted):
        GridRunner(runs, out, fake_python).run()
    stopper.join()
    assert gone(int(open(pid_file).read())), "the interrupted run kept running"
    status = read_status(out)
    assert status[runs[0].name]["state"] == "done"
    assert status[hung]["state"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is previous_handler

    summary = GridRunner(runs, out, fake_python).run()
    assert summary.skipped == [runs[0].name]
    assert summary.done == [r.name for r in runs[1:]]
    calls = [c for c in invocations(tmp_path) if c["run"] == hung]
    assert len(calls) == 2 and "--resume" in calls[1]["args"]


def test_killed_grid_finishes_on_rerun_without_redoing_runs(small_grid, fake_python, tmp_path):
    """SIGKILL of tools/ablate.py mid-run, then the same command again."""
    out = str(tmp_path / "out")
    runs = load_grid(small_grid).runs(out, "tools")
    hung = runs[1].name  # a train_net run: it resumes with --resume
    assert runs[1].method == "supervised"
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "ablate.py"),
        "--grid",
        small_grid,
        "--output",
        out,
        "--python",
        fake_python,
    ]
    env = {**os.environ, "FAKE_TOOL_HANG": hung}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pid_file = os.path.join(out, hung, "pid")
    wait_for(pid_file, proc=proc)
    proc.kill()
    proc.wait()
    # The run dies with the runner (it would otherwise hold the folder's lock).
    assert gone(int(open(pid_file).read()))

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 done, 1 skipped (finished before), 0 failed" in again.stdout
    per_run = {}
    for call in invocations(tmp_path):
        per_run.setdefault(call["run"], []).append(call["args"])
    assert sorted(per_run) == sorted(r.name for r in runs)
    assert {name: len(calls) for name, calls in per_run.items() if len(calls) > 1} == {hung: 2}
    assert "--resume" not in per_run[hung][0] and "--resume" in per_run[hung][1]
    assert {s["state"] for s in read_status(out).values()} == {"done"}
    assert os.path.isfile(os.path.join(out, "tables.md"))


def test_dry_run_prints_the_unfinished_runs(small_grid, tmp_path, capsys):
    out = str(tmp_path / "out")
    runs = load_grid(small_grid).runs(out, "tools")
    os.makedirs(runs[0].run_dir)
    open(os.path.join(runs[0].run_dir, "final_metrics.json"), "w").close()
    os.makedirs(runs[1].run_dir)
    open(os.path.join(runs[1].run_dir, "last_checkpoint"), "w").close()
    assert dry_run(runs, "python", ["--num-gpus", "8"]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        runs[1].shell_command("python", True, ["--num-gpus", "8"]),
        runs[2].shell_command("python", False, ["--num-gpus", "8"]),
        runs[3].shell_command("python", False, ["--num-gpus", "8"]),
    ]
    assert "--resume" in lines[0] and runs[1].method == "supervised"
    assert not os.path.exists(os.path.join(out, STATUS_FILE))


def control_grid(make_grid, base_configs, student: str, **overrides) -> str:
    """rand x S1 x supervised / self-training / control x seed 0, the student from ``student``."""
    return make_grid(
        axes={
            "init": ["rand"],
            "augmentation": ["S1"],
            "method": ["supervised", "self_training", "control"],
        },
        methods={
            "supervised": {"config": base_configs["supervised"]},
            "self_training": {"config": base_configs[student]},
        },
        **overrides,
    )


def test_control_continuing_a_teacher_inside_a_self_training_run(
    make_grid, base_configs, fake_python, tmp_path, monkeypatch
):
    """Without reuse_teacher the control's teacher is the self-training run's teacher stage: the
    control waits for that file, then runs beside the rest of the self-training run."""
    grid = control_grid(make_grid, base_configs, "self_training_from_teacher")
    monkeypatch.setenv("FAKE_TOOL_SECONDS", "3")
    monkeypatch.setenv("FAKE_TOOL_MODEL", "1")
    out = str(tmp_path / "out")
    runs = load_grid(grid).runs(out, "tools")
    assert [r.method for r in runs] == ["supervised", "self_training", "control"]
    summary = GridRunner(runs, out, fake_python, jobs=3).run()
    assert sorted(summary.done) == sorted(r.name for r in runs)
    calls = {c["run"]: c for c in invocations(tmp_path)}
    student, control = runs[1].name, runs[2].name
    teacher = os.path.join(out, student, "teacher", "model_final.pth")
    assert calls[control]["tool"] == "train_net.py"
    assert calls[control]["args"] == runs[2].command("PY")[2:]
    assert os.path.getmtime(teacher) <= calls[control]["start"]
    assert calls[control]["start"] < float(open(os.path.join(out, student, "end")).read())
    assert read_status(out)[control]["state"] == "done"


def test_control_waits_for_its_reused_teacher_and_restarts_like_any_run(
    make_grid, base_configs, fake_python, tmp_path, monkeypatch
):
    grid = control_grid(make_grid, base_configs, "self_training_from_teacher", reuse_teacher=True)
    out = str(tmp_path / "out")
    runs = load_grid(grid).runs(out, "tools")
    supervised, student, control = (r.name for r in runs)
    # No model from the teacher's run: neither the student nor the control starts.
    summary = GridRunner(runs, out, fake_python).run()
    assert summary.done == [supervised] and summary.failed == [student, control]
    error = read_status(out)[control]["error"]
    assert error.startswith("not started") and f"the teacher, from run {supervised}" in error
    open(os.path.join(out, supervised, "model_final.pth"), "w").close()
    # An interrupted control continues with --resume, as a train_net run.
    os.makedirs(os.path.join(out, control))
    open(os.path.join(out, control, "last_checkpoint"), "w").close()
    buf = io.StringIO()
    assert dry_run(runs, "PY", out=buf) == 2
    assert buf.getvalue().splitlines()[1] == runs[2].shell_command("PY", resume=True)
    summary = GridRunner(runs, out, fake_python).run()
    assert summary.done == [student, control] and summary.skipped == [supervised]
    assert "--resume" in invocations(tmp_path)[-1]["args"]
    assert {s["state"] for s in read_status(out).values()} == {"done"}
    assert GridRunner(runs, out, fake_python).run().skipped == [supervised, student, control]


def test_a_control_that_is_its_supervised_run_is_not_run(
    make_grid, base_configs, fake_python, tmp_path
):
    grid = control_grid(make_grid, base_configs, "self_training")  # the same 40 steps
    out = str(tmp_path / "out")
    runs = load_grid(grid).runs(out, "tools")
    assert runs[2].results_from == runs[0].name
    buf = io.StringIO()
    assert dry_run(runs, "PY", out=buf) == 2
    assert buf.getvalue().splitlines() == [r.shell_command("PY") for r in runs[:2]]
    summary = GridRunner(runs, out, fake_python).run()
    assert summary.done == [runs[0].name, runs[1].name]
    assert [c["run"] for c in invocations(tmp_path)] == [runs[0].name, runs[1].name]
    assert runs[2].name not in read_status(out) and not os.path.exists(runs[2].run_dir)
    assert is_finished(runs[2])
