"""What every ssdet tool shares: argument parsing, config setup, error reporting, results."""

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm

import ssdet
from ssdet.config import add_ssdet_config
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_write_json

logger = logging.getLogger("ssdet")

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """Detectron2's tool arguments plus ``--config``, the documented name of ``--config-file``."""
    parser = default_argument_parser(epilog)
    parser.add_argument(
        "--config", dest="config_file", metavar="FILE", help="path to config file (YAML)"
    )
    return parser


def load_cfg(config_file: str, opts: list | None = None) -> CfgNode:
    """Build a run's config from a YAML file and ``KEY VALUE`` overrides, without setting up.

    Args:
        config_file: the YAML config file.
        opts: flat ``[KEY, VALUE, ...]`` overrides applied after the file.

    Returns:
        The config, not frozen. ``MODEL.DEVICE`` "cuda" becomes "cpu" when no GPU is present.

    Raises:
        InputError: no or a missing config file, or a bad key or value.
    """
    if not config_file:
        raise InputError("No config given: pass --config FILE (see configs/).")
    if not os.path.isfile(config_file):
        raise InputError(f"Config file {config_file!r} not found.")
    cfg = get_cfg()
    add_ssdet_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(opts or [])
    except (KeyError, ValueError, AssertionError) as e:
        raise InputError(f"Bad config {config_file!r} or command-line option: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # The same config runs on a GPU machine and, smaller, on a laptop or CI.
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Build the frozen config of a run from ``--config`` and ``opts``, and set the run up.

    Detectron2's ``default_setup`` then writes the resolved config to ``OUTPUT_DIR/config.yaml``,
    sets up logging and seeds every RNG from ``SEED`` (plus the rank).
    """
    cfg = load_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    share_cpu_cores(cfg.MODEL.DEVICE)
    return cfg


def share_cpu_cores(device: str) -> None:
    """Split this machine's CPU threads between the processes ``launch`` started on it.

    Each process would otherwise use every core, and more threads than cores stall all of them.
    Several 1-thread processes (``--num-gpus N`` on a CPU machine, gloo) train the small mini
    model about 3x faster than one process with all the threads, which it cannot keep busy.
    """
    if torch.device(device).type != "cpu" or comm.get_local_size() == 1:
        return
    # The machine's threads are OMP_NUM_THREADS if set, else its cores; computed from them, not
    # from the current thread count, so that a second call changes nothing.
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        total = int(threads)
    elif hasattr(os, "sched_getaffinity"):
        total = len(os.sched_getaffinity(0))
    else:
        total = os.cpu_count() or 1
    torch.set_num_threads(max(1, total // comm.get_local_size()))


def launch_url(args: argparse.Namespace) -> str:
    """The ``--dist-url`` to launch with: a free local port for a single machine.

    Detectron2's default URL is one fixed port per user, so two multi-process runs on one machine
    (``tools/ablate.py --jobs 2 --num-gpus 2``) would collide; several machines need the given URL.
    """
    if args.num_machines == 1 and args.num_gpus > 1:
        return "auto"
    return args.dist_url


def run_tool(
    main: Callable[..., Any], args: argparse.Namespace, main_args: tuple | None = None
) -> None:
    """Run ``main(*main_args)`` (default ``main(args)``) under Detectron2's ``launch``.

    Bad input (:class:`InputError`) exits with its message only, no stack trace.
    """
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=launch_url(args),
            args=(args,) if main_args is None else main_args,
        )
    except InputError as e:
        sys.exit(f"error: {e}")


def format_ap_table(
    results: dict[str, dict[str, dict[str, float]]], row_label: str = "dataset"
) -> str:
    """A Markdown table of COCO box AP, one row per evaluated dataset.

    Args:
        results: ``{dataset: {"bbox": {"AP": ..., ...}}}`` as ``DefaultTrainer.test`` returns it
            (a single dataset's ``{"bbox": ...}`` is also accepted). Any row names work.
        row_label: the header of the first column, what the rows are.
    """
    if "bbox" in results:
        results = {"": results}
    lines = [
        f"| {row_label} | " + " | ".join(COCO_METRICS) + " |",
        "|---|" + "---:|" * len(COCO_METRICS),
    ]
    for name, res in results.items():
        box = res.get("bbox", {})
        values = (box.get(k) for k in COCO_METRICS)
        cells = ("nan" if v is None or math.isnan(v) else f"{v:.1f}" for v in values)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def write_final_metrics(cfg: CfgNode, results: dict, started: float, config_file: str) -> str:
    """Record a finished run's COCO metrics, config and wall time in ``OUTPUT_DIR``.

    ``final_metrics.json`` is what ablation tables collect; it is written atomically by the main
    process, so its presence means the run finished.

    Returns:
        The Markdown AP table (also logged).
    """
    if "bbox" in results:  # DefaultTrainer.test unwraps the results of a single test dataset
        results = {cfg.DATASETS.TEST[0]: results}
    table = format_ap_table(results)
    if comm.is_main_process():
        atomic_write_json(
            os.path.join(cfg.OUTPUT_DIR, "final_metrics.json"),
            {
                # pycocotools reports -1 (written as NaN by Detectron2) for an empty area range;
                # null keeps the file strict JSON.
                "results": _nan_to_none(results),
                "config_file": config_file,
                "seed": cfg.SEED,
                # The backbone init (Rand / ImageNet / SimCLR); OUTPUT_DIR/init.json has details.
                "init": cfg.SSDET.INIT,
                "init_weights": cfg.SSDET.INIT_WEIGHTS,
                "wall_time_s": round(time.time() - started, 1),
                "ssdet_version": ssdet.__version__,
            },
        )
        print("\n" + table + "\n", flush=True)
    return table
