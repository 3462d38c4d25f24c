"""Ablation grids of "Rethinking Pre-training and Self-training": init x augmentation x labeled
fraction x method x seed, run sequentially or on a cluster, and rendered as the paper's tables."""

from ssdet.ablation.collect import CellStats, RunResult, aggregate, collect_runs, read_run
from ssdet.ablation.grid import INITS, METHODS, Grid, Method, Run, format_fraction
from ssdet.ablation.grid_file import load_grid
from ssdet.ablation.render import Table, build_tables, render_all
from ssdet.ablation.runner import GridRunner, Interrupted, Summary, dry_run

__all__ = [
    "INITS",
    "METHODS",
    "CellStats",
    "Grid",
    "GridRunner",
    "Interrupted",
    "Method",
    "Run",
    "RunResult",
    "Summary",
    "Table",
    "aggregate",
    "build_tables",
    "collect_runs",
    "dry_run",
    "format_fraction",
    "load_grid",
    "read_run",
    "render_all",
]
