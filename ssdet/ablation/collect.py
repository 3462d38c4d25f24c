"""Collect a grid's results: each run's final COCO metrics, then mean and std over seeds per table
cell (init, augmentation, fraction, method) and deltas against Rand Init supervised, against the
supervised cell of the same init and, for self-training cells, against their equal-compute
control.

Collection needs only the folder layout ``<output>/<run name>/final_metrics.json``, so runs
executed anywhere (e.g. from ``--dry-run`` commands on a cluster) are collected once their folders
are copied under one output folder.
"""

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ssdet.ablation.grid import METHODS, Run
from ssdet.ablation.runner import read_status
from ssdet.utils.run_dir import COCO_METRICS, FINAL_METRICS

logger = logging.getLogger(__name__)

Cell = tuple[str, str, float, str]


@dataclass
class RunResult:
    """One run's outcome.

    Attributes:
        run: the run.
        state: "done" (metrics read), or the runner's record: "failed", "interrupted",
            "running", or "missing" (never started here, or run elsewhere and not copied yet),
            or "unreadable" (a final_metrics.json without the expected results).
        metrics: COCO box metrics (AP, AP50, ...; NaN where COCO reports none) when done.
        returncode: the failed run's return code, if recorded.
        message: why the run failed or is unreadable: the runner's error or the log's last line.
        wall_time_s: the finished run's wall time as its tool recorded it (NaN if not recorded,
            and for a run taking another run's results: it cost nothing).
    """

    run: Run
    state: str
    metrics: dict[str, float] = field(default_factory=dict)
    returncode: int | None = None
    message: str = ""
    wall_time_s: float = math.nan


@dataclass
class CellStats:
    """Statistics of one table cell over its seeds.

    Attributes:
        seeds: the seeds with results.
        mean, std: per metric, over those seeds (NaN without results; std NaN for one seed).
            std is the sample standard deviation (ddof=1).
        delta: per metric, mean minus that of Rand Init supervised at the same augmentation and
            fraction (NaN when either is missing).
        delta_supervised: per metric, mean minus that of the supervised cell of the same init,
            augmentation and fraction (NaN when either is missing).
        delta_control: for a cell of a method the grid has an equal-compute control of (the
            self-training cells of a grid with ``control``), per metric, mean minus that of the
            control cell of the same init, augmentation and fraction (NaN when either is
            missing); None for every other cell.
    """

    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    delta: dict[str, float]
    delta_supervised: dict[str, float] = field(default_factory=dict)
    delta_control: dict[str, float] | None = None

    @property
    def n(self) -> int:
        """The number of seeds with results."""
        return len(self.seeds)


def _metric(value) -> float:
    return float("nan") if value is None else float(value)


def read_run(run: Run, status: dict, eval_dataset: str = "") -> RunResult:
    """Read one run's ``final_metrics.json``, or its runner record when it has none.

    Args:
        run: the run.
        status: the runner's ``status.json`` records ({} when the runs ran elsewhere).
        eval_dataset: the results entry to read; "" = the first one.
    """
    path = os.path.join(run.results_dir, FINAL_METRICS)
    if not os.path.isfile(path):
        rec = status.get(run.results_from or run.name, {})
        state = rec.get("state", "missing")
        state = "missing" if state == "done" else state  # done before, then deleted
        tail = rec.get("log_tail") or [""]
        message = rec.get("error") or tail[-1]
        if run.results_from:
            note = f"takes the results of {run.results_from}"
            message = f"{note}: {message}" if message else note
        return RunResult(run, state, returncode=rec.get("returncode"), message=message)
    try:
        with open(path) as f:
            record = json.load(f)
        results = record["results"]
        dataset = eval_dataset or next(iter(results))
        box = results[dataset]["bbox"]
        metrics = {k: _metric(box.get(k)) for k in COCO_METRICS}
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        what = f"no results for dataset {eval_dataset!r}" if eval_dataset else "no results"
        return RunResult(run, "unreadable", message=f"{path}: {what} ({type(e).__name__}: {e})")
    if record.get("seed", run.seed) != run.seed:
        logger.warning(
            "%s records seed %s but the grid's run %s has seed %d: is it a run of another grid?",
            path,
            record["seed"],
            run.name,
            run.seed,
        )
    wall = None if run.results_from else record.get("wall_time_s")
    wall_time_s = float(wall) if isinstance(wall, (int, float)) else math.nan
    return RunResult(run, "done", metrics=metrics, wall_time_s=wall_time_s)


def collect_runs(runs: Sequence[Run], output_dir: str, eval_dataset: str = "") -> list[RunResult]:
    """Every run's outcome, in the grid's order (see :func:`read_run`)."""
    status = read_status(output_dir)
    return [read_run(run, status, eval_dataset) for run in runs]


def aggregate(results: Sequence[RunResult]) -> dict[Cell, CellStats]:
    """Mean and std over seeds of every cell of the grid, and deltas against Rand Init supervised,
    the same init's supervised cell and (self-training cells) the equal-compute control.

    Args:
        results: the outcomes of a grid's runs (every cell of the grid appears, even without
            results).

    Returns:
        Cell (init, augmentation, fraction, method) -> its statistics, in the grid's order.
    """
    by_cell: dict[Cell, list[RunResult]] = {}
    for r in results:
        by_cell.setdefault(r.run.cell, []).append(r)
    stats = {}
    for cell, cell_results in by_cell.items():
        done = [r for r in cell_results if r.state == "done"]
        mean, std = {}, {}
        for k in COCO_METRICS:
            values = np.array([r.metrics[k] for r in done], dtype=float)
            values = values[~np.isnan(values)]
            mean[k] = float(values.mean()) if len(values) else math.nan
            std[k] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        stats[cell] = CellStats(sorted(r.run.seed for r in done), mean, std, {})
    control_of = {spec.control_of: name for name, spec in METHODS.items() if spec.control_of}
    for (init, aug, fraction, method), s in stats.items():
        s.delta = _minus(s, stats.get(("rand", aug, fraction, "supervised")))
        s.delta_supervised = _minus(s, stats.get((init, aug, fraction, "supervised")))
        control = (init, aug, fraction, control_of.get(method))
        if control in stats:
            s.delta_control = _minus(s, stats[control])
    return stats


def _minus(s: CellStats, reference: CellStats | None) -> dict[str, float]:
    """Per metric, the cell's mean minus the reference cell's (NaN without a reference)."""
    return {k: s.mean[k] - reference.mean[k] if reference else math.nan for k in COCO_METRICS}
