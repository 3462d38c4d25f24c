"""What every ssdet tool shares: argument parsing, config setup, error reporting, results."""

import argparse
import contextlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import ssdet
from ssdet.config import add_ssdet_config
from ssdet.data.datasets import register_config_datasets
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_write_json
from ssdet.utils.run_dir import COCO_METRICS, FINAL_METRICS

logger = logging.getLogger("ssdet")


def argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """Detectron2's tool arguments plus ``--config``, the documented name of ``--config-file``."""
    parser = default_argument_parser(epilog)
    parser.add_argument(
        "--config", dest="config_file", metavar="FILE", help="path to config file (YAML)"
    )
    return parser


def load_cfg(
    config_file: str | None, opts: list | None = None, *, optional: bool = False
) -> CfgNode:
    """Build a run's config from a YAML file and ``KEY VALUE`` overrides, without setting up.

    Args:
        config_file: the YAML config file.
        opts: flat ``[KEY, VALUE, ...]`` overrides applied after the file.
        optional: with no ``config_file``, start from ssdet's defaults instead of refusing (the
            viewing tools, whose config only supplies keys such as the augmentation's).

    Returns:
        The config, not frozen. ``MODEL.DEVICE`` "cuda" becomes "cpu" when no GPU is present.

    Raises:
        InputError: no or a missing config file, one that is not YAML (a LazyConfig .py),
            or a bad key or value.
    """
    if not config_file and not optional:
        raise InputError("No config given: pass --config FILE (see configs/).")
    if config_file and not os.path.isfile(config_file):
        raise InputError(f"Config file {config_file!r} not found.")
    if config_file and not config_file.endswith((".yaml", ".yml")):
        # A LazyConfig .py is Python: loading one runs it, and no file a user passes may run code.
        raise InputError(
            f"Config {config_file!r} is not a .yaml file. ssdet reads Detectron2's YAML configs "
            "(CfgNode, keys under SSDET); LazyConfig .py configs are not supported. Start from "
            "one of configs/ (e.g. configs/mini/retinanet_R18_FPN_S1_supervised.yaml)."
        )
    cfg = get_cfg()
    add_ssdet_config(cfg)
    try:
        # Detectron2's default, allow_unsafe=True, falls back to yaml.unsafe_load, which runs any
        # Python that a config names (!!python/object/apply:os.system ...).
        if config_file:
            cfg.merge_from_file(config_file, allow_unsafe=False)
        cfg.merge_from_list(opts or [])
    except yaml.constructor.ConstructorError as e:
        raise InputError(
            f"Refused config {config_file!r}: {_one_line(e)}. ssdet reads configs as plain YAML; "
            "tags that build Python objects (!!python/...) are not loaded."
        ) from e
    except yaml.YAMLError as e:
        raise InputError(f"Config {config_file!r} is not valid YAML: {_one_line(e)}") from e
    # A file that is YAML but no mapping of keys (a list, a line of text) fails in yacs with
    # AttributeError or TypeError.
    except (KeyError, ValueError, AssertionError, AttributeError, TypeError) as e:
        where = f"config {config_file!r} or command-line option" if config_file else "option"
        raise InputError(f"Bad {where}: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # The same config runs on a GPU machine and, smaller, on a laptop or CI.
        cfg.MODEL.DEVICE = "cpu"
    # Here, where every tool and every launched worker reads its config, so that the datasets a
    # config names exist in each process that looks them up.
    register_config_datasets(cfg)
    return cfg


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def setup_cfg(args: argparse.Namespace, echo: bool = True) -> CfgNode:
    """Build the frozen config of a run from ``--config`` and ``opts``, and set the run up.

    Detectron2's ``default_setup`` then writes the resolved config to ``OUTPUT_DIR/config.yaml``,
    sets up logging and seeds every RNG from ``SEED`` (plus the rank). It logs the environment,
    the arguments and the config to ``OUTPUT_DIR/log.txt``, as plain text.

    Args:
        args: ``config_file`` and ``opts``, as the tools' arguments (also logged).
        echo: also print that setup log on stdout. A stage of an experiment passes False: the
            experiment prints the environment and its config once for all of its stages.
    """
    cfg = load_cfg(args.config_file, args.opts)
    cfg.freeze()
    rank = comm.get_rank()
    # default_setup's own setup_logger calls, made first: setup_logger caches its calls, so
    # default_setup adds no second handler to the ones configured here before it logs.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore")
    d2_logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    for name in ("fvcore", "detectron2"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_plain_text)  # a no-op when already added
    with contextlib.nullcontext() if echo else _files_only(d2_logger):
        default_setup(cfg, args)
    share_cpu_cores(cfg.MODEL.DEVICE)
    return cfg


_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _plain_text(record: logging.LogRecord) -> bool:
    """A log filter that removes terminal colour codes from the message.

    ``default_setup`` highlights the YAML it logs with pygments, so that log.txt would hold
    the config as escape sequences.
    """
    message = record.getMessage()
    if "\x1b[" in message:
        record.msg, record.args = _TERMINAL_ESCAPE.sub("", message), None
    return True


@contextlib.contextmanager
def _files_only(log: logging.Logger) -> Iterator[None]:
    """Inside the block, ``log`` writes to its log files only, not to stdout or stderr."""
    terminal = [h for h in log.handlers if getattr(h, "stream", None) in (sys.stdout, sys.stderr)]
    for handler in terminal:
        handler.addFilter(_drop)
    try:
        yield
    finally:
        for handler in terminal:
            handler.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    return False


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
            os.path.join(cfg.OUTPUT_DIR, FINAL_METRICS),
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
