#!/usr/bin/env python
"""Wall time for the supervised mini teacher to come within 1 AP of its plateau, and where a
training step's time goes.

    python benchmarks/bench_time_to_accuracy.py [--config CFG] [--eval-period 150]
        [--num-gpus 2] [--profile-steps 30] [--label before] [--output FILE] [--quick]
        [KEY VALUE ...]

Meant to run alone on the machine (its 2 CPU cores), with the torch threads the tools get.

1. The curve: ``tools/train_net.py --config CFG KEY VALUE ... TEST.EVAL_PERIOD <p> OUTPUT_DIR
   <tmp>`` in a subprocess, unchanged, so Detectron2's ``EvalHook`` evaluates DATASETS.TEST every
   ``p`` steps and after the last. This process timestamps each line of the run's log as it
   arrives: an evaluation lasts from its first ``d2.data`` / ``d2.evaluation`` line (building
   the test loader) to its ``copypaste:`` AP line, and the training wall time at an evaluation is
   the time since "Starting training" less the evaluations before it (checkpointing and logging
   count as training). The plateau is the final AP of this schedule; time_to_accuracy_s is the
   training wall time at the first evaluation with AP >= final AP - ``--tolerance-ap``.
2. The step breakdown: the same config's :class:`~ssdet.engine.Trainer` in this process (the
   run's model, optimizer and train loader, backbone init applied), then 5 warm-up and
   ``--profile-steps`` timed steps by hand, in ``SimpleTrainer.run_step``'s order: data
   (``next`` on the loader), forward (model to summed loss), backward, optimizer (``zero_grad`` +
   ``step``). Evaluation per val image comes from the curve's evaluations.

The result is stored under ``--label`` in ``{"runs": {label: {...}}}`` of ``--output`` (default
``benchmarks/results/time_to_accuracy.json``); other labels' runs in the file are kept, so that a
"before" and an "after" run can be compared. ``--quick`` is a smoke run: the instant-test config
on a generated tiny world, evaluating every 10 steps, 5 profiled steps.
"""

import argparse
import datetime
import json
import logging
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

# ssdet is imported in main() and below it, not here: it registers its datasets under
# $DETECTRON2_DATASETS when first imported, and --quick points that at a generated tiny world.

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
DEFAULT_CONFIG = os.path.join(REPO, "configs", "mini", "retinanet_R18_FPN_S1_supervised.yaml")
QUICK_CONFIG = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")
DEFAULT_OUTPUT = os.path.join(HERE, "results", "time_to_accuracy.json")
# Untimed training steps before the profiled ones (loader workers starting, allocator warm-up).
PROFILE_WARMUP_STEPS = 5
NOTE = (
    "The plateau is the final AP of this schedule (SOLVER.MAX_ITER steps); the caller makes sure "
    "the schedule has converged (the repo's convergence check: continuing the run to 1.5x its "
    "steps). With a decaying schedule (the mini configs' WarmupCosineLR) an intermediate AP is "
    "that of a partly decayed model, not of a shorter schedule run to its end: "
    "time_to_accuracy_s says when this schedule gets within the tolerance of its end, usually "
    "more than a schedule of that length would need. train_wall_s excludes evaluation (first "
    "test-loader log line to the AP line) and includes checkpointing and logging."
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Detectron2's log lines: "[12/02 07:19:58 d2.evaluation.evaluator]: message", maybe "WARNING ".
_LOG_LINE = re.compile(r"^(?:[A-Z]+ )?\[\d\d/\d\d \d\d:\d\d:\d\d (\S+)\]: (.*)$")
_START_INFERENCE = re.compile(r"Start inference on (\d+) batches")
_INFERENCE_TIME = re.compile(r"Total inference time: \S+ \(([\d.]+) s / iter per device")


def timestamped_run(cmd: list[str], env: dict[str, str]) -> tuple[list[tuple[float, str]], int]:
    """Run ``cmd`` in the repository, stamping each line of its output with its arrival.

    Returns:
        ``[(time.perf_counter() at arrival, line), ...]`` (stdout and stderr together) and the
        exit status. Iteration and AP lines are echoed as they arrive.
    """
    lines = []
    with subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        for line in proc.stdout:
            lines.append((time.perf_counter(), _ANSI.sub("", line.rstrip("\n"))))
            if " eta: " in line or re.search(r"copypaste: [\d.n]", line):
                print("  | " + lines[-1][1], flush=True)
    return lines, proc.returncode


def parse_evaluations(lines: list[tuple[float, str]]) -> tuple[float, list[dict]]:
    """The training start and each evaluation's start, end, AP and inference speed.

    Returns:
        The arrival time of "Starting training", and per evaluation in order ``{"start", "end",
        "ap", "images", "inference_s_per_image"}`` (``ap`` None when COCO reports NaN).
    """
    train_start = None
    evals = []
    current = None
    for arrival, line in lines:
        match = _LOG_LINE.match(line)
        if not match:
            continue
        name, message = match.groups()
        if message.startswith("Starting training from iteration"):
            train_start = arrival
            continue
        if train_start is None:
            continue
        if current is None:
            if not name.startswith(("d2.data", "d2.evaluation")):
                continue
            current = {"start": arrival, "images": None, "inference_s_per_image": None}
        if m := _START_INFERENCE.search(message):
            current["images"] = int(m.group(1))
        elif m := _INFERENCE_TIME.search(message):
            # The test loader's batches hold one image (build_detection_test_loader's default).
            current["inference_s_per_image"] = float(m.group(1))
        elif message.startswith("copypaste: ") and "Task:" not in message:
            values = message[len("copypaste: ") :].split(",")
            if "columns" not in current:
                current["columns"] = values
                continue
            ap = float(values[current.pop("columns").index("AP")])
            current.update(end=arrival, ap=None if math.isnan(ap) else ap)
            evals.append(current)
            current = None
    if train_start is None:
        raise RuntimeError("The training log has no 'Starting training' line.")
    return train_start, evals


def eval_iterations(eval_period: int, max_iter: int) -> list[int]:
    """The steps after which Detectron2's ``EvalHook`` evaluates: every period, and the last."""
    periodic = range(eval_period, max_iter, eval_period) if eval_period > 0 else []
    return [*periodic, max_iter]


def run_curve(args: argparse.Namespace, max_iter: int, run_dir: str) -> dict:
    """Part 1: train with periodic evaluation; the AP curve against training wall time."""
    cmd = [
        sys.executable,
        TRAIN_NET,
        "--config",
        args.config,
        "--num-gpus",
        str(args.num_gpus),
        *args.opts,
        "TEST.EVAL_PERIOD",
        str(args.eval_period),
        "OUTPUT_DIR",
        run_dir,
    ]
    print(f"curve: {shlex.join(cmd)}", flush=True)
    launched = time.perf_counter()
    lines, returncode = timestamped_run(cmd, {**os.environ, "PYTHONUNBUFFERED": "1"})
    finished = time.perf_counter()
    if returncode != 0:
        tail = "\n".join(line for _, line in lines[-40:])
        raise RuntimeError(f"tools/train_net.py exited with {returncode}:\n{tail}")
    train_start, evals = parse_evaluations(lines)
    iterations = eval_iterations(args.eval_period, max_iter)
    if len(evals) != len(iterations):
        raise RuntimeError(
            f"Expected evaluations after steps {iterations}, found {len(evals)} in the log."
        )
    curve = []
    eval_wall = 0.0
    for iteration, ev in zip(iterations, evals, strict=True):
        curve.append(
            {
                "iter": iteration,
                "ap": ev["ap"],
                "train_wall_s": round(ev["start"] - train_start - eval_wall, 3),
                "eval_wall_s": round(ev["end"] - ev["start"], 3),
                "eval_images": ev["images"],
                "inference_s_per_image": ev["inference_s_per_image"],
            }
        )
        eval_wall += ev["end"] - ev["start"]
    final_ap = curve[-1]["ap"]
    reached = None
    if final_ap is not None:
        threshold = final_ap - args.tolerance_ap
        reached = next(p for p in curve if p["ap"] is not None and p["ap"] >= threshold)
    total_train = curve[-1]["train_wall_s"]
    return {
        "train_command": shlex.join(cmd),
        "curve": curve,
        "final_ap": final_ap,
        "tolerance_ap": args.tolerance_ap,
        "time_to_accuracy_s": reached["train_wall_s"] if reached else None,
        "steps_to_accuracy": reached["iter"] if reached else None,
        "total_train_wall_s": total_train,
        "eval_wall_s": round(eval_wall, 3),
        "setup_wall_s": round(train_start - launched, 3),
        "process_wall_s": round(finished - launched, 3),
        "train_wall_per_step_s": round(total_train / max_iter, 5),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stats(seconds: list[float]) -> dict[str, float]:
    return {"mean_s": statistics.fmean(seconds), "median_s": statistics.median(seconds)}


def profile_steps(args: argparse.Namespace, output_dir: str) -> dict:
    """Part 2: the run's Trainer, stepped by hand; seconds per step of each phase."""
    from ssdet.engine import Trainer
    from ssdet.engine.defaults import load_cfg
    from ssdet.engine.trainer import uses_cpu_autocast

    # setup_cfg's config and seed, without default_setup's logging and config dump.
    cfg = load_cfg(args.config, [*args.opts, "OUTPUT_DIR", output_dir])
    cfg.freeze()
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    # The Trainer sets up Detectron2's stdout logging (and prints the model) unless its logger is
    # enabled; the curve's run has logged all that already, so only warnings are shown.
    d2_logger = logging.getLogger("detectron2")
    d2_logger.setLevel(logging.INFO)
    d2_logger.propagate = False
    warnings_only = logging.StreamHandler()
    warnings_only.setLevel(logging.WARNING)
    d2_logger.addHandler(warnings_only)
    if args.num_gpus > 1 and cfg.MODEL.DEVICE == "cpu":
        # One of the curve's processes: its share of the cores (ssdet.engine.defaults).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.num_gpus))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model, optimizer = trainer.model, trainer.optimizer
    model.train()
    data_iter = iter(trainer.data_loader)
    device = cfg.MODEL.DEVICE
    # The forward as the run's step has it: bfloat16 autocast with SOLVER.AMP on the CPU.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_cpu_autocast(cfg))
    phases = {"data": [], "forward": [], "backward": [], "optimizer": [], "step_total": []}
    with EventStorage(0) as storage:
        for step in range(PROFILE_WARMUP_STEPS + args.profile_steps):
            storage.iter = step
            _sync(device)
            t0 = time.perf_counter()
            data = next(data_iter)
            t1 = time.perf_counter()
            with autocast:
                losses = sum(model(data).values())
            _sync(device)
            t2 = time.perf_counter()
            optimizer.zero_grad()
            t3 = time.perf_counter()
            losses.backward()
            _sync(device)
            t4 = time.perf_counter()
            optimizer.step()
            _sync(device)
            t5 = time.perf_counter()
            if step >= PROFILE_WARMUP_STEPS:
                for name, seconds in (
                    ("data", t1 - t0),
                    ("forward", t2 - t1),
                    ("backward", t4 - t3),
                    ("optimizer", (t3 - t2) + (t5 - t4)),
                    ("step_total", t5 - t0),
                ):
                    phases[name].append(seconds)
    return {name: _stats(seconds) for name, seconds in phases.items()}


def git_state() -> dict:
    """The commit and whether the work tree differs from it (None outside a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def store_run(path: str, label: str, run: dict) -> None:
    """Write ``run`` as ``runs[label]`` of the JSON at ``path``, keeping the other labels."""
    from ssdet.utils.io import atomic_write_json

    runs = {}
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f).get("runs", {})
    runs[label] = run
    atomic_write_json(path, {"runs": runs})


def print_summary(run: dict) -> None:
    print(f"\n[{run['label']}] {run['config']} {' '.join(run['opts'])}")
    print(f"{'iter':>6} {'AP':>7} {'train s':>9} {'eval s':>8}")
    for p in run["curve"]:
        ap = "nan" if p["ap"] is None else f"{p['ap']:.2f}"
        print(f"{p['iter']:>6} {ap:>7} {p['train_wall_s']:>9.1f} {p['eval_wall_s']:>8.1f}")
    if run["time_to_accuracy_s"] is None:
        print("final AP is NaN: no time to accuracy")
    else:
        print(
            f"within {run['tolerance_ap']} AP of the final {run['final_ap']:.2f}: "
            f"{run['time_to_accuracy_s']:.1f} s ({run['steps_to_accuracy']} steps) of "
            f"{run['total_train_wall_s']:.1f} s training (+ {run['eval_wall_s']:.1f} s "
            f"evaluation, {run['setup_wall_s']:.1f} s setup)"
        )
    breakdown = run["breakdown"]
    if breakdown.get("step_total"):
        print(
            f"step ({run['profile_steps']} steps after {PROFILE_WARMUP_STEPS} warm-up; "
            f"the curve's: {run['train_wall_per_step_s']:.3f} s/step)"
        )
        for name in ("data", "forward", "backward", "optimizer", "step_total"):
            s = breakdown[name]
            share = f"{100 * run['fractions'][name]:5.1f} %" if name in run["fractions"] else ""
            print(f"  {name:<10} {s['mean_s']:.4f} s mean {s['median_s']:.4f} s median {share}")
    e = breakdown["eval_per_image"]
    print(
        f"evaluation: {e['eval_s']:.4f} s per val image (inference alone {e['inference_s']:.4f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="training config (YAML)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON result file")
    parser.add_argument("--label", default="default", help="name of this run in the JSON")
    parser.add_argument("--eval-period", type=int, default=150, help="steps between evaluations")
    parser.add_argument(
        "--profile-steps", type=int, default=30, help="timed steps of the breakdown (0: none)"
    )
    parser.add_argument(
        "--tolerance-ap", type=float, default=1.0, help="AP points below the final AP that count"
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes of the curve's run (train_net's --num-gpus; on a CPU machine 1-thread "
        "gloo processes); the step breakdown is one process with its share of the threads",
    )
    parser.add_argument("--run-dir", help="keep the curve run's OUTPUT_DIR here (default: temp)")
    parser.add_argument(
        "--quick", action="store_true", help="instant-test config on a tiny world, 5 steps"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_time_to_accuracy_") as tmp:
        if args.quick:
            args.config = QUICK_CONFIG if args.config == DEFAULT_CONFIG else args.config
            args.eval_period, args.profile_steps = 10, 5
            # Before ssdet's first import (next line); the training subprocess inherits it.
            os.environ["DETECTRON2_DATASETS"] = os.path.join(tmp, "datasets")
            from ssdet.data.mini_world import generate_mini_world

            generate_mini_world(os.environ["DETECTRON2_DATASETS"], tiny=True, num_workers=1)
        else:
            # Where the tools find the mini world when run from the repository.
            os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
        from ssdet.engine.defaults import load_cfg

        args.config = os.path.abspath(args.config)
        cfg = load_cfg(args.config, args.opts)
        if len(cfg.DATASETS.TEST) != 1:
            sys.exit(f"error: the curve needs one DATASETS.TEST, got {cfg.DATASETS.TEST}")
        load_before = os.getloadavg()
        if load_before[0] > 0.5:
            print(f"warning: load average {load_before[0]:.2f}: the machine is not idle")
        run_dir = args.run_dir or os.path.join(tmp, "curve")
        curve = run_curve(args, cfg.SOLVER.MAX_ITER, run_dir)
        breakdown = {}
        if args.profile_steps > 0:
            print(f"breakdown: {PROFILE_WARMUP_STEPS} + {args.profile_steps} steps", flush=True)
            breakdown = profile_steps(args, os.path.join(tmp, "profile"))
        load_after = os.getloadavg()

    evals = [p for p in curve["curve"] if p["eval_images"]]
    breakdown["eval_per_image"] = {
        "eval_s": statistics.median(p["eval_wall_s"] / p["eval_images"] for p in evals),
        "inference_s": statistics.median(
            p["inference_s_per_image"] for p in evals if p["inference_s_per_image"] is not None
        ),
    }
    fractions = {}
    if "step_total" in breakdown:
        total = breakdown["step_total"]["mean_s"]
        fractions = {
            name: breakdown[name]["mean_s"] / total
            for name in ("data", "forward", "backward", "optimizer")
        }
    run_wall = curve["total_train_wall_s"] + curve["eval_wall_s"]
    run = {
        "label": args.label,
        "config": os.path.relpath(args.config, REPO),
        "opts": args.opts,
        "quick": args.quick,
        "eval_period": args.eval_period,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "num_processes": args.num_gpus,
        "profile_steps": args.profile_steps,
        "profile_warmup_steps": PROFILE_WARMUP_STEPS,
        **curve,
        "breakdown": breakdown,
        # Shares of the step's mean time; the "_of_run" shares split the curve run's wall time.
        "fractions": {
            **fractions,
            "train_of_run": curve["total_train_wall_s"] / run_wall,
            "eval_of_run": curve["eval_wall_s"] / run_wall,
        },
        "note": NOTE,
        "command": shlex.join(["python", *sys.argv]),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "device": cfg.MODEL.DEVICE,
        **git_state(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    store_run(args.output, args.label, run)
    print_summary(run)
    print(f"wrote runs[{args.label!r}] of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
