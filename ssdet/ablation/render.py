"""Render a grid's results in the paper's table shapes (Markdown, CSV, LaTeX) and as plots.

Tables (one per labeled fraction, or per augmentation for the data-size table):

1. Supervised AP by init x augmentation (the paper's Rand / ImageNet / SimCLR rows, S1..S4).
2. Pre-training vs self-training by augmentation: Rand Init supervised, then each pre-trained init
   and each init with self-training (each after its equal-compute control, in grids with the
   control method), as AP and delta against Rand Init supervised.
3. The same by labeled fraction.
4. Joint training and all three, with the rows of table 2 for comparison (grids with joint or
   all-three runs).

Every cell is "mean ± std (delta)" of COCO AP over seeds; "-" marks a cell without results.
In a grid with the control, a self-training cell shows its deltas against the supervised and the
control cell of its own init instead: "mean ± std (+x vs sup., +y vs ctrl)".
Seeds whose value is NaN (null in final_metrics.json) are left out of the mean.
"""

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssdet.ablation.collect import Cell, CellStats, RunResult
from ssdet.ablation.grid import INIT_LABELS, METHOD_LABELS, METHODS, Grid, format_fraction
from ssdet.utils.io import atomic_open
from ssdet.utils.run_dir import COCO_METRICS

# A cell without finished runs, and one whose finished runs have no value (COCO gives none, e.g.
# Detectron2's NaN for a model without detections; written as null in final_metrics.json).
MISSING = "-"
NO_VALUE = "nan"


@dataclass
class Table:
    """One rendered table.

    Attributes:
        title: its caption.
        columns: the column headers (after the row-label column, headed "Setup").
        rows: (label, cells, whether the cells show their deltas: against Rand Init
            supervised, or for a cell with a control, against its supervised and control cells).
            A cell is None where the grid has no such run.
    """

    title: str
    columns: list[str]
    rows: list[tuple[str, list[CellStats | None], bool]]


def row_label(init: str, method: str) -> str:
    """A table row's name in the paper's words, e.g. "ImageNet Init, self-training"."""
    return f"{INIT_LABELS[init]}, {METHOD_LABELS[method]}"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}% labeled"


def build_tables(grid: Grid, stats: dict[Cell, CellStats]) -> list[Table]:
    """The paper's table shapes, for the cells this grid has.

    Args:
        grid: the grid (axis order gives row and column order).
        stats: :func:`ssdet.ablation.collect.aggregate`'s output.
    """
    inits, augs = grid.axes["init"], grid.axes["augmentation"]
    fractions, methods = grid.axes["fraction"], grid.axes["method"]
    aug_cols = [f"Augment-{a}" for a in augs]

    def row(init: str, method: str, cells: Sequence[Cell]) -> tuple[str, list, bool]:
        show_delta = (init, method) != ("rand", "supervised")
        return row_label(init, method), [stats.get(c) for c in cells], show_delta

    def order(pair: tuple[str, str]) -> tuple:
        # Rand Init supervised (the reference) first, then pre-training, then the other methods;
        # a control row just above the row of the same init it is the control of.
        init, method = pair
        group = METHODS[method].control_of or method
        ref = pair != ("rand", "supervised")
        return ref, methods.index(group), inits.index(init), group == method

    def rows_for(method_set: Sequence[str]) -> list[tuple[str, str]]:
        pairs = [(i, m) for m in methods if m in method_set for i in inits]
        return sorted([p for p in pairs if p in _present(stats)], key=order)

    tables = []
    if "supervised" in methods:
        for f in fractions:
            tables.append(
                Table(
                    f"Table 1: supervised AP by init and augmentation ({_percent(f)})",
                    aug_cols,
                    [row(i, "supervised", [(i, a, f, "supervised") for a in augs]) for i in inits],
                )
            )
    compared = rows_for(("supervised", "self_training", "control"))
    if compared:
        for f in fractions:
            tables.append(
                Table(
                    f"Table 2: pre-training vs self-training by augmentation ({_percent(f)})",
                    aug_cols,
                    [row(i, m, [(i, a, f, m) for a in augs]) for i, m in compared],
                )
            )
        for a in augs:
            tables.append(
                Table(
                    f"Table 3: pre-training vs self-training by labeled fraction (Augment-{a})",
                    [_percent(f) for f in fractions],
                    [row(i, m, [(i, a, f, m) for f in fractions]) for i, m in compared],
                )
            )
    if {"joint", "all_three"} & set(methods):
        every = rows_for(tuple(METHOD_LABELS))
        for f in fractions:
            tables.append(
                Table(
                    f"Table 4: joint training and all three by augmentation ({_percent(f)})",
                    aug_cols,
                    [row(i, m, [(i, a, f, m) for a in augs]) for i, m in every],
                )
            )
    return tables


def _present(stats: dict[Cell, CellStats]) -> set[tuple[str, str]]:
    return {(init, method) for init, _, _, method in stats}


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def format_cell(s: CellStats | None, show_delta: bool, num_seeds: int, metric: str = "AP") -> str:
    """A cell's text: "mean ± std (delta)", "[n=k]" when fewer than ``num_seeds`` seeds finished.

    A cell with an equal-compute control (a self-training cell) shows its deltas against its
    own init's supervised and control cells: "mean ± std (+x vs sup., +y vs ctrl)".

    Args:
        s: the cell's statistics, None where the grid has no such run.
        show_delta: whether to add the deltas.
        num_seeds: the grid's seed count.
        metric: the COCO metric shown.
    """
    if s is None or s.n == 0:
        return MISSING
    if math.isnan(s.mean[metric]):
        return NO_VALUE
    text = f"{s.mean[metric]:.1f}"
    if not math.isnan(s.std[metric]):
        text += f" ± {s.std[metric]:.1f}"
    if show_delta and s.delta_control is not None:
        deltas = [
            f"{_signed(delta)} vs {what}"
            for delta, what in (
                (s.delta_supervised[metric], "sup."),
                (s.delta_control[metric], "ctrl"),
            )
            if not math.isnan(delta)
        ]
        if deltas:
            text += f" ({', '.join(deltas)})"
    elif show_delta and not math.isnan(s.delta[metric]):
        text += f" ({_signed(s.delta[metric])})"
    if s.n < num_seeds:
        text += f" [n={s.n}]"
    return text


def _legend(grid: Grid) -> str:
    seeds = grid.axes["seed"]
    text = (
        f"COCO AP (box), mean ± sample std over {len(seeds)} seed(s) {seeds}; (+x.x) = AP minus "
        "Rand Init supervised at the same augmentation and labeled fraction; "
    )
    if any(METHODS[m].control_of for m in grid.axes["method"]):
        text += (
            "on self-training cells, (+x.x vs sup., +y.y vs ctrl) = AP minus the supervised and "
            "minus the equal-compute control of the same init, augmentation and labeled fraction "
            "(the control: the supervised config trained as many steps as the student; for a "
            "student that fine-tunes its teacher, the teacher trained on with the student's "
            "schedule); "
        )
    return text + (
        f"[n=k] = only k seeds finished; {MISSING} = no finished run; {NO_VALUE} = finished "
        "runs without a value."
    )


def _unfinished(results: Sequence[RunResult]) -> list[RunResult]:
    return [r for r in results if r.state != "done"]


def _counts(results: Sequence[RunResult]) -> str:
    """The runs' states; runs taking another run's results are counted apart (never run)."""
    own = [r for r in results if not r.run.results_from]
    done = sum(r.state == "done" for r in own)
    states = {}
    for r in _unfinished(own):
        states[r.state] = states.get(r.state, 0) + 1
    extra = "".join(f", {n} {state}" for state, n in sorted(states.items()))
    text = f"{len(own)} runs: {done} finished{extra}"
    shared = len(results) - len(own)
    if shared:
        text += f"; {shared} controls take their supervised run's results (the same computation)"
    return text


def format_duration(seconds: float) -> str:
    """``"2 h 05 min"`` / ``"7 min"``; ``"-"`` for NaN."""
    if math.isnan(seconds):
        return MISSING
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _wall_time(results: Sequence[RunResult]) -> str:
    """The finished runs' total wall time: what the grid cost when its runs go one after the
    other on one machine (each tool records its own wall time, wherever it ran)."""
    walls = [r.wall_time_s for r in results if r.state == "done" and not r.run.results_from]
    known = [w for w in walls if not math.isnan(w)]
    text = f"wall time of the finished runs: {format_duration(sum(known)) if known else MISSING}"
    if len(known) < len(walls):
        text += f" ({len(walls) - len(known)} without a recorded time)"
    return text


def render_markdown(grid: Grid, tables: Sequence[Table], results: Sequence[RunResult]) -> str:
    """All tables as Markdown, then every run's AP and wall time, then the runs without results
    (state, return code, message)."""
    num_seeds = len(grid.axes["seed"])
    out = [f"# Ablation: {grid.name}", ""]
    out += [f"Grid `{grid.path}`; {_counts(results)}; {_wall_time(results)}.", ""]
    out += [_legend(grid), ""]
    for t in tables:
        out += [f"## {t.title}", "", "| Setup | " + " | ".join(t.columns) + " |"]
        out.append("|---|" + "---:|" * len(t.columns))
        for label, cells, show_delta in t.rows:
            texts = [format_cell(c, show_delta, num_seeds) for c in cells]
            out.append(f"| {label} | " + " | ".join(texts) + " |")
        out.append("")
    done = [r for r in results if r.state == "done"]
    if done:
        out += ["## Runs", "", "| run | AP | wall time |", "|---|---:|---:|"]
        for r in done:
            ap = NO_VALUE if math.isnan(r.metrics["AP"]) else f"{r.metrics['AP']:.1f}"
            wall = format_duration(r.wall_time_s)
            if r.run.results_from:
                wall = f"= {r.run.results_from}"
            out.append(f"| {r.run.name} | {ap} | {wall} |")
        out.append("")
        if any(r.run.results_from for r in done):
            out += [
                "`= RUN`: a control that is the same computation as that supervised run (the "
                "student trains as many steps), so it is not run and takes that run's results "
                "(the grid's `control_reuses_supervised`).",
                "",
            ]
    unfinished = _unfinished(results)
    if unfinished:
        out += ["## Runs without results", "", "| run | state | return code | message |"]
        out.append("|---|---|---:|---|")
        for r in unfinished:
            message = r.message.replace("|", "\\|")
            code = MISSING if r.returncode is None else r.returncode
            out.append(f"| {r.run.name} | {r.state} | {code} | {message} |")
        out.append("")
    return "\n".join(out)


_TEX_ESCAPES = {c: "\\" + c for c in "&%$#_{}"} | {"±": "$\\pm$"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(c, c) for c in text)


def render_latex(grid: Grid, tables: Sequence[Table], results: Sequence[RunResult]) -> str:
    """All tables as LaTeX ``table`` environments (booktabs), runs without results as comments."""
    num_seeds = len(grid.axes["seed"])
    out = [
        f"% Ablation {_tex(grid.name)}: grid {grid.path}; {_counts(results)}; "
        f"{_wall_time(results)}.",
        "% " + _legend(grid),
        "% Needs \\usepackage{booktabs}.",
    ]
    for r in _unfinished(results):
        line = f"% {r.state} {r.run.name}"
        if r.returncode is not None:
            line += f" (return code {r.returncode})"
        if r.message:
            line += ": " + " ".join(r.message.split())
        out.append(line)
    for t in tables:
        out += [
            "",
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_tex(t.title)}}}",
            "\\begin{tabular}{l" + "c" * len(t.columns) + "}",
            "\\toprule",
            "Setup & " + " & ".join(_tex(c) for c in t.columns) + " \\\\",
            "\\midrule",
        ]
        for label, cells, show_delta in t.rows:
            texts = [_tex(format_cell(c, show_delta, num_seeds)) for c in cells]
            out.append(f"{_tex(label)} & " + " & ".join(texts) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


CSV_KEYS = ("init", "augmentation", "fraction", "method", "n", "seeds")


# Per metric: CellStats' attributes, in column order.
CSV_STATS = ("mean", "std", "delta", "delta_supervised", "delta_control")


def csv_header() -> list[str]:
    """Columns of ``tables.csv``: the cell, its seeds, then per metric its mean, std, delta
    against Rand Init supervised, delta against the same init's supervised cell, and delta
    against its equal-compute control (empty for cells without one)."""
    return [*CSV_KEYS] + [f"{m}_{s}" for m in COCO_METRICS for s in CSV_STATS]


def write_csv(path: str, stats: dict[Cell, CellStats]) -> None:
    """Every cell of the grid, one row each, with every COCO metric (empty = no value)."""

    def num(x: float | None) -> str:
        return "" if x is None or math.isnan(x) else f"{x:.4f}"

    with atomic_open(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(csv_header())
        for (init, aug, fraction, method), s in stats.items():
            values = [num((getattr(s, k) or {}).get(m)) for m in COCO_METRICS for k in CSV_STATS]
            seeds = " ".join(map(str, s.seeds))
            writer.writerow([init, aug, format_fraction(fraction), method, s.n, seeds, *values])


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def _panels(n: int, title: str) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.2 * n, 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    fig.suptitle(title)
    return fig, list(axes)


def _line(ax, xs: Sequence[float], cells: Sequence[CellStats | None], label: str) -> None:
    means = [c.mean["AP"] if c else math.nan for c in cells]
    stds = [c.std["AP"] if c and not math.isnan(c.std["AP"]) else 0.0 for c in cells]
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)


def plot_ap_vs_augmentation(path: str, grid: Grid, stats: dict[Cell, CellStats]) -> None:
    """AP against augmentation strength (S1..S4), one line per init, one panel per method.

    Drawn at the grid's largest labeled fraction.
    """
    augs, fraction = grid.axes["augmentation"], max(grid.axes["fraction"])
    methods = grid.axes["method"]
    fig, axes = _panels(len(methods), f"AP vs augmentation ({_percent(fraction)})")
    for ax, method in zip(axes, methods, strict=True):
        for init in grid.axes["init"]:
            cells = [stats.get((init, a, fraction, method)) for a in augs]
            if any(c is not None for c in cells):
                _line(ax, range(len(augs)), cells, INIT_LABELS[init])
        ax.set_xticks(range(len(augs)), [f"Augment-{a}" for a in augs])
        ax.set_title(METHOD_LABELS[method])
        ax.set_ylabel("COCO AP")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    _save(fig, path)


def plot_ap_vs_fraction(path: str, grid: Grid, stats: dict[Cell, CellStats]) -> None:
    """AP against the labeled fraction, one line per method, one panel per init.

    Drawn at the grid's last (strongest) augmentation.
    """
    fractions, aug = sorted(grid.axes["fraction"]), grid.axes["augmentation"][-1]
    inits = grid.axes["init"]
    fig, axes = _panels(len(inits), f"AP vs labeled fraction (Augment-{aug})")
    for ax, init in zip(axes, inits, strict=True):
        for method in grid.axes["method"]:
            cells = [stats.get((init, aug, f, method)) for f in fractions]
            if any(c is not None for c in cells):
                _line(ax, [100 * f for f in fractions], cells, METHOD_LABELS[method])
        ax.set_xticks([100 * f for f in fractions])
        ax.set_xlabel("labeled data (%)")
        ax.set_title(INIT_LABELS[init])
        ax.set_ylabel("COCO AP")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    _save(fig, path)


def render_all(
    output_dir: str, grid: Grid, stats: dict[Cell, CellStats], results: Sequence[RunResult]
) -> list[str]:
    """Write tables.md, tables.csv, tables.tex, ap_vs_augmentation.png and ap_vs_fraction.png.

    Returns:
        The paths written.
    """
    tables = build_tables(grid, stats)
    paths = {
        name: os.path.join(output_dir, name)
        for name in (
            "tables.md",
            "tables.csv",
            "tables.tex",
            "ap_vs_augmentation.png",
            "ap_vs_fraction.png",
        )
    }
    with atomic_open(paths["tables.md"]) as f:
        f.write(render_markdown(grid, tables, results))
    write_csv(paths["tables.csv"], stats)
    with atomic_open(paths["tables.tex"]) as f:
        f.write(render_latex(grid, tables, results))
    plot_ap_vs_augmentation(paths["ap_vs_augmentation.png"], grid, stats)
    plot_ap_vs_fraction(paths["ap_vs_fraction.png"], grid, stats)
    return list(paths.values())
