#!/usr/bin/env python
"""Whether SimCLR pre-training learns on the mini world, within its time budget.

    python benchmarks/bench_simclr.py [--config configs/pretrain/mini_simclr.yaml]
        [--num-gpus 2] [--output FILE] [--quick] [KEY VALUE ...]

Runs ``tools/pretrain.py --config CFG --num-gpus N OUTPUT_DIR <tmp>
SSDET.PRETRAIN.LINEAR_PROBE.RANDOM_INIT_BASELINE True KEY VALUE ...`` in a subprocess, alone on
the machine (with the threads the tools get), and writes its linear probe, the untrained
backbone's, their ratio and the wall time to ``--output`` (default
``benchmarks/results/simclr.json``), with the targets of the mini world's SimCLR arm: a probe
>= 2x the untrained backbone's and >= 40% top-1, in <= 15 minutes. ``--quick`` is a smoke run:
the instant-test config on a generated tiny world (its numbers say nothing about learning; the
test suite's tiny-world check is ``test_simclr_loss_falls_on_the_tiny_world``).
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "pretrain", "mini_simclr.yaml")
QUICK_CONFIG = os.path.join(REPO, "configs", "pretrain", "pretrain_instant_test.yaml")
DEFAULT_OUTPUT = os.path.join(REPO, "benchmarks", "results", "simclr.json")
# The mini world's SimCLR targets (the whole-study issue).
TARGET_RATIO = 2.0
TARGET_TOP1 = 40.0
TARGET_WALL_S = 15 * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--num-gpus", type=int, default=2, help="processes (gloo on a CPU)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("--quick", action="store_true", help="instant-test config, tiny world")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench_simclr_") as tmp:
        if args.quick:
            args.config, args.num_gpus = QUICK_CONFIG, 1
            env["DETECTRON2_DATASETS"] = os.path.join(tmp, "datasets")
            from ssdet.data.mini_world import generate_mini_world

            generate_mini_world(env["DETECTRON2_DATASETS"], tiny=True, num_workers=1)
        else:
            env.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
        out = os.path.join(tmp, "run")
        cmd = [
            sys.executable, os.path.join(REPO, "tools", "pretrain.py"), "--config", args.config,
            "--method", "simclr", "--num-gpus", str(args.num_gpus), "OUTPUT_DIR", out,
            "SSDET.PRETRAIN.LINEAR_PROBE.RANDOM_INIT_BASELINE", "True", *args.opts,
        ]  # fmt: skip
        if os.getloadavg()[0] > 0.5:
            print(f"warning: load average {os.getloadavg()[0]:.2f}: the machine is not idle")
        started = time.time()
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        wall = time.time() - started
        with open(os.path.join(out, "pretrain_metrics.json")) as f:
            metrics = json.load(f)
    probe, untrained = metrics["linear_probe_top1"], metrics["linear_probe_top1_random_init"]
    result = {
        "config": os.path.relpath(args.config, REPO),
        "opts": args.opts,
        "quick": args.quick,
        "num_processes": args.num_gpus,
        "linear_probe_top1": probe,
        "linear_probe_top1_random_init": untrained,
        "ratio": probe / untrained if untrained else None,
        "chance_top1": metrics["chance_top1"],
        "epochs": metrics["epochs"],
        "train_wall_s": metrics["wall_time_s"],
        "wall_s": wall,
        "targets": {
            f"ratio >= {TARGET_RATIO}": bool(untrained and probe / untrained >= TARGET_RATIO),
            f"top1 >= {TARGET_TOP1}": probe >= TARGET_TOP1,
            f"wall <= {TARGET_WALL_S} s": wall <= TARGET_WALL_S,
        },
        "command": shlex.join(["python", *sys.argv]),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "date": datetime.date.today().isoformat(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp_output = args.output + ".tmp"
    with open(tmp_output, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp_output, args.output)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
