"""tools/ablate.py end to end with the real tools: a grid of instant-test runs, one of which
fails on a bad config key, then --collect-only; bad input ends with one error line."""

import json
import os
import subprocess
import sys

from ssdet.ablation.ablate import ablate, argument_parser
from ssdet.ablation.runner import read_status

from ..conftest import REPO

TOOLS = os.path.join(REPO, "tools")


def test_grid_of_real_runs_with_a_failure(tiny_world, make_grid, tmp_path, capsys):
    grid = make_grid(
        axes={"init": ["rand"], "augmentation": ["S1", "S2"], "method": ["supervised"]},
        # The S2 run gets a key no config has.
        value_opts={"augmentation": {"S2": ["SSDET.NO_SUCH_KEY", 1]}},
    )
    out = str(tmp_path / "out")
    args = argument_parser().parse_args(["--grid", grid, "--output", out])
    assert ablate(args, TOOLS) == 1  # a run failed
    printed = capsys.readouterr().out
    assert "1 done, 0 skipped (finished before), 1 failed" in printed

    done = os.path.join(out, "rand_S1_f1.0_supervised_s0")
    metrics = json.load(open(os.path.join(done, "final_metrics.json")))
    assert set(metrics["results"]["mini_coco_val"]["bbox"]) >= {"AP", "AP50", "APs"}
    assert metrics["seed"] == 0 and metrics["init"] == "RAND"
    status = read_status(out)
    assert status["rand_S1_f1.0_supervised_s0"]["state"] == "done"
    failed = status["rand_S2_f1.0_supervised_s0"]
    assert failed["state"] == "failed" and failed["returncode"] == 1
    assert failed["log_tail"][-1].startswith("error: Bad config")
    assert "SSDET.NO_SUCH_KEY" in failed["log_tail"][-1]
    assert os.path.isfile(os.path.join(out, "grid.yaml"))

    md = open(os.path.join(out, "tables.md")).read()
    ap = metrics["results"]["mini_coco_val"]["bbox"]["AP"]
    assert f"| Rand Init, supervised | {'nan' if ap is None else f'{ap:.1f}'} | - |" in md
    assert "| rand_S2_f1.0_supervised_s0 | failed | 1 | error: Bad config" in md

    # --collect-only runs nothing and renders the same tables.
    os.remove(os.path.join(out, "tables.md"))
    args = argument_parser().parse_args(["--grid", grid, "--output", out, "--collect-only"])
    assert ablate(args, TOOLS) == 0
    assert open(os.path.join(out, "tables.md")).read() == md
    assert read_status(out) == status


def test_bad_input_is_one_error_line(tmp_path):
    bad = tmp_path / "grid.yaml"
    bad.write_text("axes: {init: [rand], augmentation: [S7], method: [supervised]}\n")
    proc = subprocess.run(
        [sys.executable, os.path.join(TOOLS, "ablate.py"), "--grid", str(bad), "--output", "x"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "unknown value 'S7'" in proc.stderr and "Traceback" not in proc.stderr
