"""The ablation tool (tools/ablate.py): run a grid, print its commands, or collect its tables."""

import argparse
import logging
import os
import sys

from ssdet.ablation.collect import aggregate, collect_runs
from ssdet.ablation.grid_file import load_grid
from ssdet.ablation.render import render_all
from ssdet.ablation.runner import GridRunner, dry_run, write_grid_copy
from ssdet.utils.errors import InputError

logger = logging.getLogger(__name__)


def argument_parser() -> argparse.ArgumentParser:
    """The arguments of tools/ablate.py."""
    parser = argparse.ArgumentParser(
        description="Run an ablation grid (configs/ablations/) and render its tables and plots.",
        epilog="Stopping the tool at any point and rerunning the same command finishes the grid "
        "without redoing finished runs.",
    )
    parser.add_argument("--grid", required=True, metavar="GRID.yaml", help="the grid file")
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="the grid's folder: DIR/<run name>/, tables"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="print one shell command per unfinished run (for a cluster scheduler); run nothing",
    )
    mode.add_argument(
        "--collect-only",
        action="store_true",
        help="run nothing; collect DIR/<run name>/final_metrics.json and render the tables",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        metavar="EXE",
        help="the Python interpreter that runs the tools (default: this one)",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        metavar="N",
        help="GPUs per run (passed to each tool as --num-gpus N; default 1)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs at a time on this machine (default 1); each gets OMP_NUM_THREADS = cores / N "
        "unless set, and its own GPUs when there are N x --num-gpus of them",
    )
    return parser


def ablate(args: argparse.Namespace, tools_dir: str) -> int:
    """Run, print or collect the grid as ``args`` say.

    Args:
        args: :func:`argument_parser`'s arguments.
        tools_dir: the folder holding train_net.py and self_train.py.

    Returns:
        The exit status: 1 if a run failed in this invocation, else 0.

    Raises:
        InputError: a bad grid file or --jobs, or the output folder is in use by another runner.
    """
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    grid = load_grid(args.grid)
    if os.path.abspath(tools_dir).startswith(os.getcwd() + os.sep):
        tools_dir = os.path.relpath(tools_dir)  # readable commands from the repository root
    runs = grid.runs(args.output, tools_dir)
    tool_args = ["--num-gpus", str(args.num_gpus)] if args.num_gpus != 1 else []
    if args.dry_run:
        dry_run(runs, args.python, tool_args)
        return 0
    failed = False
    if not args.collect_only:
        os.makedirs(args.output, exist_ok=True)
        write_grid_copy(args.grid, args.output)
        runner = GridRunner(
            runs, args.output, args.python, tool_args, jobs=args.jobs, num_gpus=args.num_gpus
        )
        summary = runner.run()
        print(summary.format(runner.status), flush=True)
        failed = bool(summary.failed)
    results = collect_runs(runs, args.output, grid.eval_dataset)
    paths = render_all(args.output, grid, aggregate(results), results)
    with open(paths[0]) as f:
        print("\n" + f.read(), flush=True)
    print("wrote " + ", ".join(paths), flush=True)
    return int(failed)
