"""How a tool's run starts and ends in a process: Detectron2's ``launch``, the stage's logging,
the ``error:`` exit, and the train-or-evaluate main of ``tools/train_net.py`` and of every
training stage of a self-training experiment."""

import argparse
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssdet.checkpoint import SsdetCheckpointer
from ssdet.engine.defaults import load_cfg, setup_cfg, write_final_metrics
from ssdet.engine.interrupt import TrainingInterrupted, exit_interrupted, launch_interruptible
from ssdet.engine.student import StudentTrainer
from ssdet.engine.trainer import Trainer
from ssdet.utils.errors import exit_on_input_error
from ssdet.utils.lock import output_dir_lock

__all__ = [
    "launch_main",
    "launch_url",
    "run_tool",
    "scoped_logging",
    "setup_stage_logging",
    "train_main",
    "train_or_evaluate",
]

# The loggers that Detectron2's and ssdet's setup attach handlers to.
_LOGGERS = ("detectron2", "fvcore", "ssdet")


def launch_url(args: argparse.Namespace) -> str:
    """The ``--dist-url`` to launch with: a free local port for a single machine.

    Detectron2's default URL is one fixed port per user, so two multi-process runs on one machine
    (``tools/ablate.py --jobs 2 --num-gpus 2``) would collide; several machines need the given URL.
    """
    if args.num_machines == 1 and args.num_gpus > 1:
        return "auto"
    return args.dist_url


def launch_main(
    main: Callable[..., Any], launch_args: argparse.Namespace, main_args: tuple, output_dir: str
) -> None:
    """``main(*main_args)`` on every rank of Detectron2's ``launch``, with the launch arguments of
    a tool's command line (``--num-gpus``, ``--num-machines``, ...).

    SIGINT and SIGTERM raise :class:`~ssdet.engine.interrupt.TrainingInterrupted` once the
    workers stopped, naming the last checkpoint in ``output_dir`` ("" = none to name).
    """
    launch_interruptible(
        main,
        launch_args.num_gpus,
        num_machines=launch_args.num_machines,
        machine_rank=launch_args.machine_rank,
        dist_url=launch_url(launch_args),
        args=main_args,
        output_dir=output_dir,
    )


def run_tool(
    main: Callable[..., Any],
    args: argparse.Namespace,
    main_args: tuple | None = None,
    lock_output_dir: bool = False,
) -> None:
    """Run ``main(*main_args)`` (default ``main(args)``) under Detectron2's ``launch``.

    Bad input (:class:`InputError`) exits with its message only, no stack trace. SIGINT and
    SIGTERM stop the run (a training loop after its current step, with its checkpoint) and exit
    with one line and code 130 or 143 (:mod:`ssdet.engine.interrupt`).

    Args:
        main, args, main_args: the function ``launch`` runs on every rank, and its arguments.
        lock_output_dir: hold the lock of the run's ``OUTPUT_DIR`` (from ``args.config_file`` and
            ``args.opts``) while it runs, on the first machine: a second run on that folder
            stops with an error naming the first one's PID (see :mod:`ssdet.utils.lock`).
    """
    with exit_on_input_error():
        try:
            with contextlib.ExitStack() as stack:
                output_dir = ""
                if lock_output_dir and args.machine_rank == 0:
                    # Here, before launch: a worker's InputError would be a traceback.
                    output_dir = load_cfg(args.config_file, args.opts).OUTPUT_DIR or "."
                    stack.enter_context(output_dir_lock(output_dir))
                launch_main(main, args, (args,) if main_args is None else main_args, output_dir)
        except TrainingInterrupted as e:
            exit_interrupted(e, "Run the same command with --resume to continue.")


def setup_stage_logging(output_dir: str, stdout: bool) -> None:
    # The same arguments as Detectron2's default_setup, whose calls setup_logger caches.
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    setup_logger(
        output_dir,
        distributed_rank=rank,
        name="ssdet",
        abbrev_name="ssdet",
        configure_stdout=stdout,
    )


@contextlib.contextmanager
def scoped_logging() -> Iterator[None]:
    """Remove the log handlers that are set up inside the block when it ends.

    Each stage logs into its own folder. Stages that run in this process (``launch`` with one
    process per machine calls them directly) would otherwise keep logging into the folders of
    the stages before them. Detectron2's ``setup_logger`` caches its calls; the cache is
    cleared, so that a later run in this process sets its handlers up again.
    """
    before = {name: list(logging.getLogger(name).handlers) for name in _LOGGERS}
    try:
        yield
    finally:
        for name, handlers in before.items():
            stage_logger = logging.getLogger(name)
            for handler in list(stage_logger.handlers):
                if handler not in handlers:
                    handler.flush()
                    stage_logger.removeHandler(handler)
        setup_logger.cache_clear()


def train_main(args: argparse.Namespace) -> dict:
    """Train and evaluate (or, with ``args.eval_only``, only evaluate) one detector.

    A training or evaluation stage's main, what ``tools/train_net.py`` runs:
    :class:`~ssdet.engine.StudentTrainer` when the config names a pseudo-label store, else
    :class:`~ssdet.engine.Trainer`; ``final_metrics.json`` at the end. Runs on every rank of
    Detectron2's ``launch``. Its setup log goes to the stage's ``log.txt`` only.

    Args:
        args: ``config_file``, ``opts``, ``eval_only`` and ``resume``, as the tool's arguments.

    Returns:
        ``{dataset: {"bbox": metrics}}`` (the main process's).
    """
    started = time.time()
    # The environment and config go to the stage's log.txt; the experiment printed them once.
    cfg = setup_cfg(args, echo=False)
    # A launched worker starts without handlers; this process has the experiment's stdout.
    setup_stage_logging(cfg.OUTPUT_DIR, stdout=comm.get_world_size() > 1)
    return train_or_evaluate(cfg, args, started)


def train_or_evaluate(cfg: CfgNode, args: argparse.Namespace, started: float) -> dict:
    """Train (or only evaluate) the detector of a set-up ``cfg``; write ``final_metrics.json``.

    Args:
        cfg: the run's frozen config, after :func:`~ssdet.engine.setup_cfg`.
        args: ``config_file``, ``eval_only`` and ``resume``, as the tools' arguments.
        started: the run's start (``time.time()``), for the recorded wall time.

    Returns:
        ``{dataset: {"bbox": metrics}}`` (the main process's).
    """
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SsdetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
    else:
        trainer = StudentTrainer(cfg) if cfg.SSDET.PSEUDO_LABELS.STORE else Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    write_final_metrics(cfg, results, started, args.config_file)
    return results
