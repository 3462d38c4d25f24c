"""A clean stop on Ctrl-C (SIGINT) and SIGTERM: the training loop ends after its current step.

:class:`StopOnSignal`, a hook of every ssdet trainer (the detector's, the student's, the
pre-training's), turns the first SIGINT or SIGTERM during training into a request. After the
step that is running, the trainer saves the checkpoint of that step (``model_<iter>.pth``,
atomically, tagged as ``last_checkpoint``) unless the periodic checkpointer just did, and raises
:class:`TrainingInterrupted`; ``--resume`` (a rerun of ``tools/self_train.py``) continues from
there. The tools end with one line on stderr and exit code 128 + the signal: 130 for SIGINT, 143
for SIGTERM. A signal during the last step lets the run finish (its final evaluation); further
signals while stopping are ignored (SIGKILL still kills).

Under Detectron2's ``launch`` with several processes, every rank must stop after the same step,
or the others would wait forever in the next step's all-reduce: the ranks all-reduce the request
after every step (one integer; only when there are several processes). The launching process
forwards the signal to its workers, since ``kill PID`` reaches it alone (a terminal's Ctrl-C
reaches them all), and reports their stop (:func:`launch_interruptible`).

Outside a training loop (setup, evaluation, labeling), SIGINT and SIGTERM stop the tool at once,
with the same line and exit code; what those write is atomic or resumable on its own (the
labeler's chunks).
"""

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import HookBase, launch
from detectron2.engine.hooks import EvalHook
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from ssdet.engine.exact_resume import collect_rank_state
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open

__all__ = [
    "STOP_SIGNALS",
    "StopOnSignal",
    "TrainingInterrupted",
    "add_stop_on_signal",
    "exit_interrupted",
    "launch_interruptible",
]

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Detectron2's (fvcore's) checkpoint tag and the periodic checkpoints' names.
_TAG_FILE = "last_checkpoint"
_FINAL = "model_final.pth"


class TrainingInterrupted(BaseException):
    """A run stopped on SIGINT or SIGTERM (its training loop after a step, with a checkpoint).

    A ``BaseException``, as ``KeyboardInterrupt``: Detectron2's training loop logs any
    ``Exception`` as a failure with its traceback, and a stop on request is none.

    Args:
        signum: the signal.
        output_dir: the run's folder, where the last checkpoint is.
    """

    def __init__(self, signum: int, output_dir: str = ""):
        super().__init__(signum, output_dir)
        self.signum = int(signum)
        self.output_dir = output_dir

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum

    def message(self, hint: str) -> str:
        """One line: the signal, the last checkpoint (if any) and ``hint`` (how to continue)."""
        name = signal.Signals(self.signum).name
        checkpoint = last_checkpoint(self.output_dir) if self.output_dir else ""
        where = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        return f"interrupted by {name}: stopped; {where}. {hint}"


def last_checkpoint(output_dir: str) -> str:
    """The checkpoint that ``output_dir``'s ``last_checkpoint`` tag names, or ""."""
    try:
        with open(os.path.join(output_dir, _TAG_FILE)) as f:
            name = f.read().strip()
    except OSError:
        return ""
    return os.path.join(output_dir, name) if name else ""


def exit_interrupted(interrupted: TrainingInterrupted, hint: str) -> None:
    """End the tool: the one-line message on stderr, exit code 128 + the signal."""
    print(interrupted.message(hint), file=sys.stderr, flush=True)
    sys.exit(interrupted.exit_code)


def _in_forked_worker(pid: int, signum: int) -> bool:
    """Whether this is a process forked from ``pid`` (a DataLoader worker, which inherits the
    handlers); then the signal is handled as a worker should: SIGTERM ends it, SIGINT (a
    terminal's Ctrl-C reaches the whole process group) is left to the main process."""
    if os.getpid() == pid:
        return False
    if signum == signal.SIGTERM:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return True


class StopOnSignal(HookBase):
    """Stop training after the current step on SIGINT or SIGTERM, with a checkpoint of it.

    See the module docstring. Its place is after the LR scheduler and the periodic checkpointer
    (the checkpoint holds the scheduler's state after the step; a step just checkpointed is not
    saved twice) and before the evaluation (which a stop skips): :func:`add_stop_on_signal`.
    """

    def __init__(self) -> None:
        self._requested: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def _request(self, signum: int, frame: Any) -> None:
        if _in_forked_worker(self._pid, signum):
            return
        # Only a flag: the handler runs between two bytecodes of whatever the main thread does.
        if self._requested is None:
            self._requested = signum

    def before_train(self) -> None:
        self._requested = None
        self._pid = os.getpid()
        # Python runs signal handlers in the main thread only (and sets them only from there).
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._request) for s in STOP_SIGNALS}

    def after_train(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def after_step(self) -> None:
        requested = self._requested or 0
        if comm.get_world_size() > 1:
            # NCCL reduces CUDA tensors only; Detectron2 reads its losses every step anyway, so
            # the sync costs nothing more.
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            flag = torch.tensor([requested], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = int(flag.item())
        if not requested:
            return
        trainer = self.trainer
        name = signal.Signals(requested).name
        if trainer.iter >= trainer.max_iter - 1:
            # The periodic checkpointer saved model_final.pth: only the final evaluation is left.
            logger.warning("%s in the last iteration: finishing the run", name)
            self._requested = None
            return
        # Every process's own state goes into the checkpoint (ssdet.engine.exact_resume).
        collect_rank_state(trainer)
        checkpointer = trainer.checkpointer
        basename = f"model_{trainer.iter:07d}"
        if comm.is_main_process() and last_checkpoint(checkpointer.save_dir) != os.path.join(
            checkpointer.save_dir, basename + ".pth"
        ):
            checkpointer.save(basename, iteration=trainer.iter)
        # The other ranks end only once the main process has written the checkpoint.
        comm.synchronize()
        logger.warning("%s: stopped training after iteration %d", name, trainer.iter)
        raise TrainingInterrupted(requested, checkpointer.save_dir)


def add_stop_on_signal(hooks: list[HookBase | None]) -> list[HookBase | None]:
    """``hooks`` (a ``DefaultTrainer``'s) with a :class:`StopOnSignal` before the first
    ``EvalHook`` (at the end when there is none)."""
    index = next((i for i, h in enumerate(hooks) if isinstance(h, EvalHook)), len(hooks))
    return [*hooks[:index], StopOnSignal(), *hooks[index:]]


def _raise_interrupted(pid: int, output_dir: str, signum: int, frame: Any) -> None:
    if not _in_forked_worker(pid, signum):
        raise TrainingInterrupted(signum, output_dir)


# A launched worker's exit code for bad input; its message is in a file of the error folder.
_INPUT_ERROR_EXIT = 3


def _exit_on_interrupt(main: Callable[..., Any], error_dir: str, *args: Any) -> Any:
    """A launched worker's ``main``: a stop ends the worker with the signal's exit code, which
    the launching process reads (a ``BaseException`` would end it with a traceback and 1). Bad
    input (:class:`InputError`) ends it with ``_INPUT_ERROR_EXIT``, its message left in a file of
    ``error_dir`` for the launching process to report as its own."""
    try:
        return main(*args)
    except TrainingInterrupted as e:
        sys.exit(e.exit_code)
    except InputError as e:
        with atomic_open(os.path.join(error_dir, f"{os.getpid()}.txt")) as f:
            f.write(str(e))
        sys.exit(_INPUT_ERROR_EXIT)


def _worker_input_error(error_dir: str) -> InputError | None:
    """The bad input a worker reported (the first message in ``error_dir``), if any."""
    for name in sorted(os.listdir(error_dir)):
        with open(os.path.join(error_dir, name)) as f:
            return InputError(f.read())
    return None


@contextlib.contextmanager
def _forward_to_workers(received: list[int]) -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM are passed on to this process's workers (and
    recorded in ``received``) instead of ending it while they save their checkpoint."""

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_signal(exit_code: int) -> int | None:
    """The stop signal that ended a worker with ``exit_code`` (128 + it, or killed by it)."""
    for signum in STOP_SIGNALS:
        if exit_code in (128 + signum, -signum):
            return signum
    return None


def launch_interruptible(
    main: Callable[..., Any],
    num_gpus_per_machine: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    output_dir: str = "",
) -> None:
    """Detectron2's ``launch``; a stop on SIGINT or SIGTERM raises :class:`TrainingInterrupted`.

    Args:
        main, num_gpus_per_machine, num_machines, machine_rank, dist_url, args: ``launch``'s.
        output_dir: the run's folder, named in the stop's message.

    Raises:
        TrainingInterrupted: this process or its workers got SIGINT or SIGTERM.
        InputError: a worker refused its input (its message, raised here once, not each
            worker's traceback).
    """
    if num_machines * num_gpus_per_machine == 1:
        # In this process: SIGTERM ends it as Ctrl-C does, outside the training loop at once.
        previous = signal.signal(
            signal.SIGTERM, functools.partial(_raise_interrupted, os.getpid(), output_dir)
        )
        try:
            launch(main, 1, args=args)
        except KeyboardInterrupt:
            raise TrainingInterrupted(signal.SIGINT, output_dir) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        return
    received: list[int] = []
    with _forward_to_workers(received), tempfile.TemporaryDirectory() as error_dir:
        try:
            launch(
                functools.partial(_exit_on_interrupt, main, error_dir),
                num_gpus_per_machine,
                num_machines=num_machines,
                machine_rank=machine_rank,
                dist_url=dist_url,
                args=args,
            )
        except ProcessExitedException as e:
            error = _worker_input_error(error_dir)
            if e.exit_code == _INPUT_ERROR_EXIT and error is not None:
                raise error from None
            signum = _stop_signal(e.exit_code)
            if signum is None:
                raise
            raise TrainingInterrupted(signum, output_dir) from None
    if received:
        # Workers that got the signal outside their training loop end normally (Ctrl-C).
        raise TrainingInterrupted(received[0], output_dir)
