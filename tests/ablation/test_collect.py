"""Collection from hand-made final_metrics.json files, statistics over seeds, and every output:
Markdown, CSV and LaTeX tables (parsed back) and the PNG plots."""

import csv
import json
import math
import os
import re

import numpy as np
import pytest
from PIL import Image

from ssdet.ablation import aggregate, collect_runs, load_grid, render_all
from ssdet.ablation.runner import STATUS_FILE
from ssdet.engine.defaults import COCO_METRICS
from ssdet.utils.io import atomic_write_json

FAILED = "rand_S4_f1.0_supervised_s1"
UNREADABLE = "imagenet_S1_f0.2_self_training_s1"
MISSING_CELL = ("imagenet", "S4", 0.2, "self_training")


def write_metrics(run, metrics: dict, dataset: str = "mini_coco_val", **extra) -> None:
    atomic_write_json(
        os.path.join(run.run_dir, "final_metrics.json"),
        {"results": {dataset: {"bbox": metrics}}, "seed": run.seed, **extra},
    )


@pytest.fixture
def world(make_grid, tmp_path):
    """A 32-run grid with hand-made results: one cell without any, one run failed (its cell has
    one seed), one unreadable file; returns the grid, runs, output folder and the AP values."""
    out = str(tmp_path / "out")
    grid = load_grid(make_grid())
    runs = grid.runs(out, "tools")
    rng = np.random.default_rng(0)
    values = {}  # run name -> metrics written
    for run in runs:
        if run.cell == MISSING_CELL or run.name in (FAILED, UNREADABLE):
            continue
        metrics = {k: float(rng.uniform(0, 60)) for k in COCO_METRICS}
        metrics["APl"] = None  # pycocotools' "no such objects", written as null
        metrics["AP-circle"] = 12.0  # per-class APs are ignored
        write_metrics(run, metrics)
        values[run.name] = metrics
    os.makedirs(os.path.join(out, UNREADABLE))
    with open(os.path.join(out, UNREADABLE, "final_metrics.json"), "w") as f:
        json.dump({"seed": 1}, f)
    atomic_write_json(
        os.path.join(out, STATUS_FILE),
        {
            FAILED: {
                "state": "failed",
                "returncode": 1,
                "error": None,
                "log_tail": ["...", "error: Bad config | something"],
            }
        },
    )
    return grid, runs, out, values


def expected_stats(runs, values, metric="AP"):
    """Per cell: (mean, sample std, n) computed directly with numpy."""
    cells = {}
    for run in runs:
        cells.setdefault(run.cell, [])
        if run.name in values and values[run.name][metric] is not None:
            cells[run.cell].append(values[run.name][metric])
    out = {}
    for cell, v in cells.items():
        mean = float(np.mean(v)) if v else math.nan
        std = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
        out[cell] = (mean, std, len(v))
    return out


def test_collection_and_statistics_match_numpy(world):
    grid, runs, out, values = world
    results = collect_runs(runs, out, grid.eval_dataset)
    states = {r.run.name: r for r in results}
    assert states[FAILED].state == "failed" and states[FAILED].returncode == 1
    assert states[FAILED].message == "error: Bad config | something"
    assert states[UNREADABLE].state == "unreadable" and "no results" in states[UNREADABLE].message
    assert {states[r.name].state for r in runs if r.cell == MISSING_CELL} == {"missing"}
    assert sum(r.state == "done" for r in results) == len(values) == 32 - 4

    stats = aggregate(results)
    assert set(stats) == {r.cell for r in runs}
    for metric in ("AP", "AP50", "APs", "APl"):
        expected = expected_stats(runs, values, metric)
        for cell, (mean, std, n) in expected.items():
            s = stats[cell]
            np.testing.assert_allclose(s.mean[metric], mean, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(s.std[metric], std, rtol=1e-12, equal_nan=True)
            if metric == "AP":
                assert s.n == n
            init, aug, fraction, _ = cell
            base = expected[("rand", aug, fraction, "supervised")][0]
            np.testing.assert_allclose(s.delta[metric], mean - base, rtol=1e-12, equal_nan=True)
    assert stats[MISSING_CELL].n == 0 and math.isnan(stats[MISSING_CELL].mean["AP"])
    assert stats[("rand", "S4", 1.0, "supervised")].seeds == [0]  # seed 1 failed
    assert all(math.isnan(s.mean["APl"]) for s in stats.values())


def test_eval_dataset_picks_the_results_entry(make_grid, tmp_path):
    axes = {"init": ["rand"], "augmentation": ["S1"], "method": ["supervised"]}
    out = str(tmp_path / "out")
    (run,) = load_grid(make_grid(axes=axes)).runs(out, "tools")
    atomic_write_json(
        os.path.join(run.run_dir, "final_metrics.json"),
        {
            "results": {
                "mini_coco_val": {"bbox": {"AP": 10.0}},
                "other_val": {"bbox": {"AP": 20.0}},
            }
        },
    )
    assert collect_runs([run], out)[0].metrics["AP"] == 10.0
    grid = load_grid(make_grid(axes=axes, eval_dataset="other_val"))
    assert collect_runs([run], out, grid.eval_dataset)[0].metrics["AP"] == 20.0
    result = collect_runs([run], out, "no_such_val")[0]
    assert result.state == "unreadable" and "no_such_val" in result.message


def parse_markdown(text: str) -> dict[str, list[list[str]]]:
    """Title -> rows (header first) of every '## ' table."""
    tables, title = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
            tables[title] = []
        elif line.startswith("|") and title and not line.startswith("|---"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            tables[title].append([c.strip() for c in cells])
    return tables


def parse_latex(text: str) -> dict[str, list[list[str]]]:
    """Caption -> rows (header first) of every table environment, LaTeX escapes undone."""
    tables = {}
    for block in text.split("\\begin{table}")[1:]:
        caption = re.search(r"\\caption\{(.*)\}", block).group(1)
        body = block.split("\\toprule")[1].split("\\bottomrule")[0]
        rows = [r.strip() for r in body.replace("\\midrule", "").split("\\\\") if r.strip()]
        tables[caption.replace("\\%", "%")] = [
            [c.strip().replace("$\\pm$", "±").replace("\\%", "%") for c in r.split(" & ")]
            for r in rows
        ]
    return tables


def cell_text(mean: float, std: float, n: int, delta: float | None, seeds: int = 2) -> str:
    if n == 0:
        return "-"
    text = f"{mean:.1f}" + (f" ± {std:.1f}" if n > 1 else "")
    if delta is not None:
        text += f" ({delta:+.1f})"
    return text + (f" [n={n}]" if n < seeds else "")


def test_render_every_format(world):
    grid, runs, out, values = world
    results = collect_runs(runs, out)
    paths = render_all(out, grid, aggregate(results), results)
    assert sorted(os.path.basename(p) for p in paths) == [
        "ap_vs_augmentation.png",
        "ap_vs_fraction.png",
        "tables.csv",
        "tables.md",
        "tables.tex",
    ]
    expected = expected_stats(runs, values)

    def expected_row(init, method, cells):
        texts = []
        for cell in cells:
            mean, std, n = expected[cell]
            base = expected[("rand", cell[1], cell[2], "supervised")][0]
            show = (init, method) != ("rand", "supervised")
            texts.append(cell_text(mean, std, n, mean - base if show else None))
        return texts

    md = open(os.path.join(out, "tables.md")).read()
    tables = parse_markdown(md)
    titles = [t for t in tables if t.startswith("Table")]
    assert titles == [
        "Table 1: supervised AP by init and augmentation (20% labeled)",
        "Table 1: supervised AP by init and augmentation (100% labeled)",
        "Table 2: pre-training vs self-training by augmentation (20% labeled)",
        "Table 2: pre-training vs self-training by augmentation (100% labeled)",
        "Table 3: pre-training vs self-training by labeled fraction (Augment-S1)",
        "Table 3: pre-training vs self-training by labeled fraction (Augment-S4)",
    ]
    for fraction, pct in ((0.2, "20%"), (1.0, "100%")):
        t1 = tables[f"Table 1: supervised AP by init and augmentation ({pct} labeled)"]
        assert t1[0] == ["Setup", "Augment-S1", "Augment-S4"]
        for row, init, label in zip(
            t1[1:], ("rand", "imagenet"), ("Rand Init", "ImageNet Init"), strict=True
        ):
            cells = [(init, a, fraction, "supervised") for a in ("S1", "S4")]
            assert row == [f"{label}, supervised", *expected_row(init, "supervised", cells)]
    t3 = tables["Table 3: pre-training vs self-training by labeled fraction (Augment-S4)"]
    assert t3[0] == ["Setup", "20% labeled", "100% labeled"]
    assert [r[0] for r in t3[1:]] == [
        "Rand Init, supervised",
        "ImageNet Init, supervised",
        "Rand Init, self-training",
        "ImageNet Init, self-training",
    ]
    for row, (init, method) in zip(
        t3[1:],
        [
            ("rand", "supervised"),
            ("imagenet", "supervised"),
            ("rand", "self_training"),
            ("imagenet", "self_training"),
        ],
        strict=True,
    ):
        cells = [(init, "S4", f, method) for f in (0.2, 1.0)]
        assert row[1:] == expected_row(init, method, cells)
    assert t3[4][1] == "-"  # the cell without any result
    assert "[n=1]" in t3[1][2]  # Rand Init supervised S4 100%: seed 1 failed
    # The runs without results, with the failure's return code and last log line.
    unfinished = {r[0]: r for r in tables["Runs without results"][1:]}
    assert unfinished[FAILED][1:] == ["failed", "1", "error: Bad config \\| something"]
    assert unfinished[UNREADABLE][1] == "unreadable"
    assert {unfinished[r.name][1] for r in runs if r.cell == MISSING_CELL} == {"missing"}

    tex = open(os.path.join(out, "tables.tex")).read()
    assert parse_latex(tex) == {t: rows for t, rows in tables.items() if t in titles}
    for line in tex.splitlines():
        if not line.startswith("%"):
            assert not re.search(r"(?<!\\)[%_#]", line), line
    assert f"% failed {FAILED} (return code 1)" in tex

    with open(os.path.join(out, "tables.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(expected) == 16
    for row in rows:
        cell = (row["init"], row["augmentation"], float(row["fraction"]), row["method"])
        mean, std, n = expected[cell]
        assert int(row["n"]) == n
        base = expected[("rand", cell[1], cell[2], "supervised")][0]
        for key, value in (("AP_mean", mean), ("AP_std", std), ("AP_delta", mean - base)):
            if math.isnan(value):
                assert row[key] == ""
            else:
                assert float(row[key]) == pytest.approx(value, abs=1e-4)
        assert row["APl_mean"] == ""

    for name in ("ap_vs_augmentation.png", "ap_vs_fraction.png"):
        with Image.open(os.path.join(out, name)) as image:
            assert image.format == "PNG" and min(image.size) > 100
            image.verify()


def test_joint_and_all_three_table(make_grid, tmp_path):
    axes = {
        "init": ["rand", "imagenet"],
        "augmentation": ["S4"],
        "method": ["supervised", "self_training", "joint", "all_three"],
    }
    out = str(tmp_path / "out")
    grid = load_grid(make_grid(axes=axes))
    runs = grid.runs(out, "tools")
    ap = {r.name: 10.0 + k for k, r in enumerate(runs)}
    for run in runs:
        write_metrics(run, {"AP": ap[run.name]})
    results = collect_runs(runs, out)
    render_all(out, grid, aggregate(results), results)
    tables = parse_markdown(open(os.path.join(out, "tables.md")).read())
    t4 = tables["Table 4: joint training and all three by augmentation (100% labeled)"]
    base = ap["rand_S4_f1.0_supervised_s0"]
    rows = {r[0]: r[1] for r in t4[1:]}
    assert list(rows)[0] == "Rand Init, supervised" and rows["Rand Init, supervised"] == "10.0"
    assert "Rand Init, all three" not in rows
    for label, name in (
        ("ImageNet Init, all three", "imagenet_S4_f1.0_all_three_s0"),
        ("Rand Init, joint training", "rand_S4_f1.0_joint_s0"),
        ("ImageNet Init, self-training", "imagenet_S4_f1.0_self_training_s0"),
    ):
        assert rows[label] == f"{ap[name]:.1f} ({ap[name] - base:+.1f})"
    assert "Runs without results" not in tables


def test_nothing_collected_yet_renders_empty_cells(make_grid, tmp_path):
    out = str(tmp_path / "out")
    grid = load_grid(make_grid())
    results = collect_runs(grid.runs(out, "tools"), out)
    paths = render_all(out, grid, aggregate(results), results)
    tables = parse_markdown(open(os.path.join(out, "tables.md")).read())
    cells = [
        c for t, rows in tables.items() if t.startswith("Table") for r in rows[1:] for c in r[1:]
    ]
    assert cells and set(cells) == {"-"}
    assert len(tables["Runs without results"]) == 1 + 32
    for p in paths:
        assert os.path.getsize(p) > 0


def test_finished_runs_without_a_value_are_not_missing(make_grid, tmp_path):
    """Detectron2 reports NaN (null in the file) for a model without detections."""
    axes = {"init": ["rand"], "augmentation": ["S1", "S4"], "method": ["supervised"]}
    out = str(tmp_path / "out")
    grid = load_grid(make_grid(axes=axes))
    s1, s4 = grid.runs(out, "tools")
    write_metrics(s1, {"AP": None})
    results = collect_runs([s1, s4], out)
    render_all(out, grid, aggregate(results), results)
    tables = parse_markdown(open(os.path.join(out, "tables.md")).read())
    row = tables["Table 1: supervised AP by init and augmentation (100% labeled)"][1]
    assert row == ["Rand Init, supervised", "nan", "-"]


def test_wall_time_is_summed_and_listed_per_run(make_grid, tmp_path):
    """The grid's cost in the rendered tables: each finished run's recorded wall time and their
    sum; a run without a recorded time is counted, not guessed."""
    axes = {"init": ["rand"], "augmentation": ["S1", "S4"], "method": ["supervised"]}
    axes["seed"] = [0, 1]
    out = str(tmp_path / "out")
    grid = load_grid(make_grid(axes=axes))
    runs = grid.runs(out, "tools")
    for run, wall in zip(runs[:3], (3000.0, 1500.4, None), strict=True):
        extra = {} if wall is None else {"wall_time_s": wall}
        write_metrics(run, {"AP": 10.0 + run.seed}, **extra)
    results = collect_runs(runs, out)
    assert [r.wall_time_s for r in results[:2]] == [3000.0, 1500.4]
    assert math.isnan(results[2].wall_time_s) and math.isnan(results[3].wall_time_s)
    render_all(out, grid, aggregate(results), results)
    text = open(os.path.join(out, "tables.md")).read()
    # 4500.4 s = 75 min.
    assert "wall time of the finished runs: 1 h 15 min (1 without a recorded time)" in text
    rows = parse_markdown(text)["Runs"]
    assert rows[0] == ["run", "AP", "wall time"]
    assert rows[1:] == [
        [runs[0].name, "10.0", "50 min"],
        [runs[1].name, "10.0", "25 min"],
        [runs[2].name, "11.0", "-"],
    ]
    tex = open(os.path.join(out, "tables.tex")).read()
    assert "wall time of the finished runs: 1 h 15 min" in tex.splitlines()[0]


def control_world(make_grid, base_configs, tmp_path, student: str, **overrides):
    """Rand / ImageNet Init x S1 / S4 x supervised / self-training / control x 2 seeds."""
    axes = {
        "init": ["rand", "imagenet"],
        "augmentation": ["S1", "S4"],
        "fraction": [1.0],
        "method": ["supervised", "self_training", "control"],
        "seed": [0, 1],
    }
    methods = {
        "supervised": {"config": base_configs["supervised"]},
        "self_training": {"config": base_configs[student]},
    }
    out = str(tmp_path / "out")
    grid = load_grid(make_grid(axes=axes, methods=methods, **overrides))
    return grid, grid.runs(out, "tools"), out


# AP of each method and init at Augment-S1; S4 is 10 lower, seed 1 is 1 higher than seed 0.
AP = {
    ("rand", "supervised"): 27.0,
    ("rand", "control"): 29.5,
    ("rand", "self_training"): 30.0,
    ("imagenet", "supervised"): 53.0,
    ("imagenet", "control"): 54.0,
    ("imagenet", "self_training"): 52.5,
}


def ap_of(run) -> float:
    return AP[(run.init, run.method)] - 10.0 * (run.augmentation == "S4") + run.seed


def test_deltas_against_the_control_in_every_format(make_grid, base_configs, tmp_path):
    grid, runs, out = control_world(
        make_grid, base_configs, tmp_path, "self_training_from_teacher", reuse_teacher=True
    )
    assert not any(r.results_from for r in runs)  # continuations: every control runs
    no_control = ("imagenet", "S4", 1.0, "control")  # a control cell without results yet
    for run in runs:
        if run.cell != no_control:
            write_metrics(run, {"AP": ap_of(run), "AP50": 2 * ap_of(run)})
    results = collect_runs(runs, out)
    stats = aggregate(results)
    st = stats[("rand", "S1", 1.0, "self_training")]
    assert st.delta_supervised["AP"] == pytest.approx(3.0)
    assert st.delta_control["AP"] == pytest.approx(0.5)
    assert st.delta_control["AP50"] == pytest.approx(1.0)
    assert stats[("imagenet", "S1", 1.0, "self_training")].delta["AP"] == pytest.approx(25.5)
    assert stats[("imagenet", "S1", 1.0, "control")].delta_control is None
    assert math.isnan(stats[("imagenet", "S4", 1.0, "self_training")].delta_control["AP"])

    render_all(out, grid, aggregate(results), results)
    md = open(os.path.join(out, "tables.md")).read()
    assert (
        "(+x.x vs sup., +y.y vs ctrl) = AP minus the supervised and minus the equal-compute" in md
    )
    tables = parse_markdown(md)
    t2 = tables["Table 2: pre-training vs self-training by augmentation (100% labeled)"]
    # The control just above the self-training row of its init; "vs sup." and "vs ctrl" are
    # against the same init, the other rows' deltas against Rand Init supervised.
    assert t2[1:] == [
        ["Rand Init, supervised", "27.5 ± 0.7", "17.5 ± 0.7"],
        ["ImageNet Init, supervised", "53.5 ± 0.7 (+26.0)", "43.5 ± 0.7 (+26.0)"],
        ["Rand Init, equal-compute control", "30.0 ± 0.7 (+2.5)", "20.0 ± 0.7 (+2.5)"],
        [
            "Rand Init, self-training",
            "30.5 ± 0.7 (+3.0 vs sup., +0.5 vs ctrl)",
            "20.5 ± 0.7 (+3.0 vs sup., +0.5 vs ctrl)",
        ],
        ["ImageNet Init, equal-compute control", "54.5 ± 0.7 (+27.0)", "-"],
        [
            "ImageNet Init, self-training",
            "53.0 ± 0.7 (-0.5 vs sup., -1.5 vs ctrl)",
            "43.0 ± 0.7 (-0.5 vs sup.)",
        ],
    ]
    t3 = tables["Table 3: pre-training vs self-training by labeled fraction (Augment-S1)"]
    assert [r[1] for r in t3[1:]] == [r[1] for r in t2[1:]]
    titles = [t for t in tables if t.startswith("Table")]
    tex = open(os.path.join(out, "tables.tex")).read()
    assert parse_latex(tex) == {t: rows for t, rows in tables.items() if t in titles}

    with open(os.path.join(out, "tables.csv")) as f:
        rows = {(r["init"], r["augmentation"], r["method"]): r for r in csv.DictReader(f)}
    assert len(rows) == 12
    row = rows[("rand", "S1", "self_training")]
    assert float(row["AP_delta"]) == float(row["AP_delta_supervised"]) == pytest.approx(3.0)
    assert float(row["AP_delta_control"]) == pytest.approx(0.5)
    assert float(row["AP50_delta_control"]) == pytest.approx(1.0)
    row = rows[("imagenet", "S1", "self_training")]
    assert float(row["AP_delta"]) == pytest.approx(25.5)
    assert float(row["AP_delta_supervised"]) == pytest.approx(-0.5)
    assert float(row["AP_delta_control"]) == pytest.approx(-1.5)
    assert rows[("imagenet", "S4", "self_training")]["AP_delta_control"] == ""
    assert {rows[k]["AP_delta_control"] for k in rows if k[2] != "self_training"} == {""}
    assert float(rows[("imagenet", "S1", "control")]["AP_delta_supervised"]) == pytest.approx(1.0)
    with Image.open(os.path.join(out, "ap_vs_fraction.png")) as image:
        image.verify()


def test_a_control_takes_the_results_of_its_supervised_run(make_grid, base_configs, tmp_path):
    """A student from its own init with the supervised step count: the control is the supervised
    run, never run, and its cells are the supervised cells."""
    grid, runs, out = control_world(make_grid, base_configs, tmp_path, "self_training")
    controls = [r for r in runs if r.method == "control"]
    assert all(r.results_from for r in controls)
    unfinished = "imagenet_S4_f1.0_supervised_s1"
    for run in runs:
        if run.method != "control" and run.name != unfinished:
            write_metrics(run, {"AP": ap_of(run)}, wall_time_s=600.0)
    atomic_write_json(
        os.path.join(out, STATUS_FILE),
        {unfinished: {"state": "failed", "returncode": 1, "error": None, "log_tail": ["oom"]}},
    )
    results = {r.run.name: r for r in collect_runs(runs, out)}
    control = results["rand_S1_f1.0_control_s0"]
    assert control.state == "done" and control.metrics["AP"] == ap_of(runs[0]) == 27.0
    assert math.isnan(control.wall_time_s)  # it cost nothing
    failed = results["imagenet_S4_f1.0_control_s1"]
    assert failed.state == "failed" and failed.returncode == 1
    assert failed.message == f"takes the results of {unfinished}: oom"

    stats = aggregate(list(results.values()))
    for init in ("rand", "imagenet"):
        st = stats[(init, "S1", 1.0, "self_training")]
        assert st.delta_control["AP"] == pytest.approx(st.delta_supervised["AP"])
    render_all(out, grid, stats, list(results.values()))
    md = open(os.path.join(out, "tables.md")).read()
    # 16 runs of their own (15 finished), at 10 min each; 8 controls are supervised runs.
    assert "16 runs: 15 finished, 1 failed; 8 controls take their supervised run's results" in md
    assert "wall time of the finished runs: 2 h 30 min." in md
    tables = parse_markdown(md)
    t2 = {
        r[0]: r[1:]
        for r in tables["Table 2: pre-training vs self-training by augmentation (100% labeled)"][1:]
    }
    assert t2["Rand Init, equal-compute control"] == ["27.5 ± 0.7 (+0.0)", "17.5 ± 0.7 (+0.0)"]
    assert t2["Rand Init, self-training"][0] == "30.5 ± 0.7 (+3.0 vs sup., +3.0 vs ctrl)"
    assert t2["ImageNet Init, equal-compute control"][1] == "43.0 (+25.5) [n=1]"
    listed = {r[0]: r[1:] for r in tables["Runs"][1:]}
    assert listed["rand_S1_f1.0_control_s0"] == ["27.0", "= rand_S1_f1.0_supervised_s0"]
    assert listed["rand_S1_f1.0_supervised_s0"] == ["27.0", "10 min"]
    assert "`= RUN`: a control that is the same computation as that supervised run" in md
    without = {r[0]: r[1:] for r in tables["Runs without results"][1:]}
    assert without["imagenet_S4_f1.0_control_s1"][:2] == ["failed", "1"]
