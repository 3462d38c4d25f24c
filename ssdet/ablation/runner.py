"""Run a grid's runs on this machine (one or ``jobs`` at a time), or print their commands.

A run is finished when its ``final_metrics.json`` exists (the tools write it atomically, last), so
the runner is restartable at any point: finished runs are skipped, an interrupted train_net run
continues from its ``last_checkpoint`` with ``--resume`` and an interrupted self-training run
continues by itself. A run that fails is recorded in ``<output>/status.json`` (return code and the
tail of its log) and the runner goes on with the next one; rerunning retries it. A run that takes
another run's results (a control that is the same computation as its supervised run) is neither
run nor printed.
"""

import ctypes
import functools
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import torch
from tqdm import tqdm

from ssdet.ablation.grid import Run
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open, atomic_write_json
from ssdet.utils.lock import output_dir_lock
from ssdet.utils.run_dir import FINAL_METRICS

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
RUN_LOG = "ablate.log"
# Lines of a failed run's log kept in status.json.
LOG_TAIL_LINES = 30
# Seconds a stopped run gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 60
# What to do when another runner holds the output folder's lock.
_LOCK_ADVICE = (
    "Wait for it to finish, or give another --output (--collect-only can run alongside it)."
)


class Interrupted(Exception):
    """The runner was asked to stop (SIGINT or SIGTERM)."""


@dataclass
class Summary:
    """What one invocation of the runner did.

    Attributes:
        done: runs trained to the end now.
        skipped: runs already finished before.
        failed: runs that failed now.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def format(self, status: dict[str, dict[str, Any]]) -> str:
        """One line of counts, then one line per failed run with its return code and last line."""
        lines = [
            f"ablate: {len(self.done)} done, {len(self.skipped)} skipped (finished before), "
            f"{len(self.failed)} failed"
        ]
        for name in self.failed:
            rec = status.get(name, {})
            why = rec.get("error") or f"return code {rec.get('returncode')}"
            tail = rec.get("log_tail") or [""]
            lines.append(f"  FAILED {name}: {why} | {tail[-1]} | log: {rec.get('log')}")
        return "\n".join(lines)


def is_finished(run: Run) -> bool:
    """Whether the run wrote its final metrics (or the run it takes its results from did)."""
    return os.path.isfile(os.path.join(run.results_dir, FINAL_METRICS))


def runs_to_train(runs: Sequence[Run]) -> list[Run]:
    """The runs with a computation of their own: all but those taking another run's results."""
    shared = [r for r in runs if r.results_from]
    if shared:
        logger.info(
            "%d run(s) take the results of the same computation and are not run: %s.",
            len(shared),
            ", ".join(f"{r.name} = {r.results_from}" for r in shared),
        )
    return [r for r in runs if not r.results_from]


def needs_resume(run: Run) -> bool:
    """Whether the run's command takes ``--resume``: a train_net run that saved a checkpoint."""
    return run.resumable_by_flag and os.path.isfile(os.path.join(run.run_dir, "last_checkpoint"))


def read_status(output_dir: str) -> dict[str, dict[str, Any]]:
    """The runner's record of every run it started in ``output_dir`` ({} if none)."""
    path = os.path.join(output_dir, STATUS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(
            f"{path} is unreadable ({e}); delete it: finished runs are found from their "
            f"{FINAL_METRICS}."
        ) from e


def dry_run(
    runs: Sequence[Run], python: str, tool_args: Sequence[str] = (), out: IO[str] | None = None
) -> int:
    """Print one shell command per unfinished run, for a cluster scheduler; run nothing.

    A run with a checkpoint gets ``--resume``, so printing again after a preemption gives the
    commands that finish the grid.

    Args:
        runs: the grid's runs.
        python: the interpreter in the commands.
        tool_args: arguments of every tool, e.g. ``["--num-gpus", "8"]``.
        out: where to print (default: standard output).

    Returns:
        The number of commands printed.
    """
    out = out or sys.stdout
    runs = runs_to_train(runs)
    todo = [r for r in runs if not is_finished(r)]
    for run in todo:
        print(run.shell_command(python, needs_resume(run), tool_args), file=out)
    if len(todo) < len(runs):
        logger.info("%d of %d runs are finished and not listed.", len(runs) - len(todo), len(runs))
    return len(todo)


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Interrupted`, as SIGINT is turned into KeyboardInterrupt."""

    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# prctl is looked up before any fork: the child of a threaded parent must not load libraries.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: get SIGTERM when the runner dies, even by SIGKILL (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(1)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a run and everything it started (its own process group)."""
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log, progress-bar redraws (carriage returns) collapsed."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64 * 1024))
        text = f.read().decode(errors="replace")
    out = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return [line for line in out if line][-lines:]


@dataclass
class _Started:
    """A run in progress: its process, when it started, its log and its job slot."""

    run: Run
    proc: subprocess.Popen
    started: float
    log_path: str
    slot: int


class GridRunner:
    """Runs a grid's runs, ``jobs`` at a time, recording each one in ``<output_dir>/status.json``.

    Runs start in grid order. A run that needs another run's output (a self-training run's reused
    teacher, the teacher a control continues) waits until that output exists or the run making
    it has ended, and fails without starting if it then is missing. Runs taking another run's
    results are left out (:func:`runs_to_train`).
    With ``jobs > 1``, each run gets an equal share of the machine: ``OMP_NUM_THREADS`` = CPU
    cores / jobs (unless set in the environment), and, when there are enough GPUs for every job,
    its own ``CUDA_VISIBLE_DEVICES`` (``num_gpus`` per run).

    Args:
        runs: the runs, in the order to run them.
        output_dir: the grid's output folder.
        python: the interpreter that runs the tools.
        tool_args: arguments of every tool, e.g. ``["--num-gpus", "8"]``.
        jobs: how many runs at a time (>= 1).
        num_gpus: GPUs per run, to give each job its own GPUs.
    """

    # Seconds between checks of the running processes.
    POLL_S = 0.5

    def __init__(
        self,
        runs: Sequence[Run],
        output_dir: str,
        python: str,
        tool_args: Sequence[str] = (),
        jobs: int = 1,
        num_gpus: int = 1,
    ):
        if jobs < 1:
            raise InputError(f"--jobs must be >= 1, got {jobs}")
        self.runs = runs_to_train(runs)
        self.output_dir = output_dir
        self.python = python
        self.tool_args = list(tool_args)
        self.jobs = jobs
        self.num_gpus = num_gpus
        self.status = read_status(output_dir)

    def _record(self, name: str, **fields: Any) -> None:
        self.status.setdefault(name, {}).update(fields)
        atomic_write_json(os.path.join(self.output_dir, STATUS_FILE), self.status)

    def run(self) -> Summary:
        """Run every unfinished run; keep going past failures.

        Returns:
            What was done, skipped and failed.

        Raises:
            InputError: another runner uses the output folder.
            Interrupted, KeyboardInterrupt: the runner was stopped; the current runs are stopped
                and recorded as interrupted, and rerunning continues them.
        """
        summary = Summary()
        pending = list(self.runs)
        running: list[_Started] = []
        with output_dir_lock(self.output_dir, _LOCK_ADVICE) as lock_fd, _stop_on_sigterm():
            bar = tqdm(total=len(self.runs), desc="ablation runs", unit="run", dynamic_ncols=True)
            try:
                while pending or running:
                    self._start_ready(pending, running, summary, lock_fd, bar)
                    if not running:
                        continue
                    time.sleep(self.POLL_S)
                    for job in [job for job in running if job.proc.poll() is not None]:
                        running.remove(job)
                        ok = self._finish(job, bar)
                        (summary.done if ok else summary.failed).append(job.run.name)
                        bar.update()
                    names = ", ".join(job.run.name for job in running)
                    if names != bar.postfix:  # a redraw per poll would flood a log file
                        bar.set_postfix_str(names)
            except (KeyboardInterrupt, Interrupted):
                for job in running:
                    _stop(job.proc)
                    self._record(
                        job.run.name,
                        state="interrupted",
                        returncode=job.proc.returncode,
                        wall_time_s=round(time.time() - job.started, 1),
                    )
                raise
            finally:
                bar.close()
        return summary

    def _start_ready(
        self,
        pending: list[Run],
        running: list[_Started],
        summary: Summary,
        lock_fd: int,
        bar: tqdm,
    ) -> None:
        """Skip the finished runs, fail those whose inputs will not come, start the ready ones
        while job slots are free."""
        producers = {r.run_dir for r in pending} | {job.run.run_dir for job in running}

        def made_by_another(path: str, run: Run) -> bool:
            # The output may lie deeper in the producer's folder (a self-training run's teacher).
            return any(path.startswith(d + os.sep) for d in producers - {run.run_dir})

        for run in list(pending):
            if is_finished(run):
                pending.remove(run)
                summary.skipped.append(run.name)
                if self.status.get(run.name, {}).get("state") != "done":
                    self._record(run.name, state="done", returncode=0, error=None, log_tail=None)
                bar.update()
                continue
            missing = [(path, what) for path, what in run.needs if not os.path.isfile(path)]
            if any(made_by_another(path, run) for path, _ in missing):
                continue  # an earlier run makes it: wait for that one
            if missing:
                pending.remove(run)
                error = "not started: missing " + "; ".join(f"{w} ({p})" for p, w in missing)
                self._record(run.name, state="failed", returncode=None, error=error, log_tail=None)
                bar.write(f"FAILED {run.name}: {error}")
                summary.failed.append(run.name)
                bar.update()
                continue
            free = sorted(set(range(self.jobs)) - {job.slot for job in running})
            if not free:
                return
            pending.remove(run)
            running.append(self._start(run, lock_fd, free[0], bar))

    def _environment(self, slot: int) -> dict[str, str] | None:
        """The run's environment: a share of the CPU threads and GPUs per job (None: inherit)."""
        if self.jobs == 1:
            return None
        env = dict(os.environ)
        # Runs that each use every core slow each other down far more than they gain.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.jobs)))
        gpus = torch.cuda.device_count()
        if "CUDA_VISIBLE_DEVICES" not in env and gpus >= self.jobs * self.num_gpus > 0:
            first = slot * self.num_gpus
            env["CUDA_VISIBLE_DEVICES"] = ",".join(
                str(i) for i in range(first, first + self.num_gpus)
            )
        return env

    def _start(self, run: Run, lock_fd: int, slot: int, bar: tqdm) -> _Started:
        log_path = os.path.join(run.run_dir, RUN_LOG)
        resume = needs_resume(run)
        cmd = run.command(self.python, resume, self.tool_args)
        os.makedirs(run.run_dir, exist_ok=True)
        self._record(
            run.name,
            state="running",
            command=shlex.join(cmd),
            log=log_path,
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            returncode=None,
            error=None,
            log_tail=None,
        )
        bar.write(f"{'resuming' if resume else 'running'} {run.name} (log: {log_path})")
        with open(log_path, "a") as log:
            log.write(f"\n=== ablate.py {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(slot),
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                pass_fds=(lock_fd,),
            )
        return _Started(run, proc, time.time(), log_path, slot)

    def _finish(self, job: _Started, bar: tqdm) -> bool:
        run, returncode = job.run, job.proc.returncode
        wall = round(time.time() - job.started, 1)
        if returncode == 0 and is_finished(run):
            self._record(run.name, state="done", returncode=0, wall_time_s=wall)
            bar.write(f"done {run.name} in {wall / 60:.1f} min")
            return True
        error = None if returncode else f"exited 0 without writing {FINAL_METRICS}"
        tail = log_tail(job.log_path)
        self._record(
            run.name,
            state="failed",
            returncode=returncode,
            error=error,
            log_tail=tail,
            wall_time_s=wall,
        )
        bar.write(f"FAILED {run.name} (return code {returncode}): {tail[-1] if tail else ''}")
        return False


def write_grid_copy(grid_path: str, output_dir: str) -> None:
    """Keep the grid file the runs came from next to them, as ``<output_dir>/grid.yaml``."""
    with open(grid_path) as f:
        text = f.read()
    with atomic_open(os.path.join(output_dir, "grid.yaml")) as f:
        f.write(text)
