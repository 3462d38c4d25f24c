#!/usr/bin/env python
"""Cost of the student's step and mixed batches against a plain Detectron2 training iteration.

    python benchmarks/bench_student_step.py [--config CFG] [--sizes 160 320] [--rounds 15]

The model is the config's (default: the mini world's RetinaNet, 8 images per step), at each image
size of ``--sizes``. Both trainers get the same in-memory batch every step, so only the step
differs:

* plain: Detectron2's ``SimpleTrainer.run_step`` on the 8 images;
* student: ``SimpleStudentTrainer.run_step`` on the same images as a ``MixedBatch`` of 4
  human-labeled + 4 pseudo-labeled (one forward of the 8 with each part's losses computed on its
  rows, the moving-average loss normalization, the per-part normalizers and metrics);
* student_two_forwards: the same with ``one_forward=False`` (each part through the model on its
  own; the student step before ``SSDET.SELF_TRAINING.ONE_FORWARD``), for comparison.

They run in turn in one process with one torch thread by default (the machine's load hits
both alike) from the same initial weights; the result is the ratio of the median step times.
Two more measurements isolate what the student adds to the model's work: the plain and student
trainers on a trivial model (the step's bookkeeping, in microseconds), and the loaders alone
(Detectron2's ``build_detection_train_loader`` of 8 images against ``build_mixed_train_loader``
of 4 + 4 with a pass-through mapper: the mixing without image decoding). Writes JSON (default
``benchmarks/results/student_step.json``).
"""

import argparse
import copy
import itertools
import os
import platform
import statistics
import sys
import time

import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ssdet.config import add_ssdet_config
from ssdet.data.mixed import MixedBatch, build_mixed_train_loader
from ssdet.engine.pseudo_loss import PseudoLossWeighting
from ssdet.engine.student import SimpleStudentTrainer
from ssdet.utils.io import atomic_write_json

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_CONFIG = os.path.join(REPO, "configs", "mini", "Base-RetinaNet-mini.yaml")
DEFAULT_OUTPUT = os.path.join(HERE, "results", "student_step.json")
# The student's step should cost at most this factor of a plain Detectron2 step.
TARGET_STUDENT_OVER_PLAIN = 1.10


def synthetic_batch(cfg, seed: int = 0) -> list[dict]:
    """``IMS_PER_BATCH`` mapped images of ``SSDET.AUGMENT.OUTPUT_SIZE`` with 2-6 random boxes."""
    g = torch.Generator().manual_seed(seed)
    height, width = cfg.SSDET.AUGMENT.OUTPUT_SIZE
    images = []
    for _ in range(cfg.SOLVER.IMS_PER_BATCH):
        k = int(torch.randint(2, 7, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        wh = 8 + torch.rand(k, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, cfg.MODEL.RETINANET.NUM_CLASSES, (k,), generator=g)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
        images.append({"image": image, "instances": instances, "height": height, "width": width})
    return images


def time_trainers(plain_model, batch: list[dict], rounds: int, warmup: int, lr: float) -> dict:
    """Seconds per step of the plain and the student trainers from the same weights, in turn."""
    half = len(batch) // 2
    trainers = {
        "plain": SimpleTrainer(
            plain_model,
            itertools.repeat(batch),
            torch.optim.SGD(plain_model.parameters(), lr=lr, momentum=0.9),
        )
    }
    for name, one_forward in (("student", True), ("student_two_forwards", False)):
        model = copy.deepcopy(plain_model)
        trainers[name] = SimpleStudentTrainer(
            model,
            itertools.repeat(MixedBatch(batch[:half], batch[half:])),
            torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
            loss_weighting=PseudoLossWeighting("moving_average"),
            one_forward=one_forward,
        )
    seconds = {name: [] for name in trainers}
    with EventStorage() as storage:
        for it in range(warmup + rounds):
            storage.iter = it
            # Rotate which one goes first, so that none always follows another.
            names = list(trainers)
            order = names[it % len(names) :] + names[: it % len(names)]
            for name in order:
                trainers[name].iter = it
                started = time.perf_counter()
                trainers[name].run_step()
                if it >= warmup:
                    seconds[name].append(time.perf_counter() - started)
    result = {
        name: {"median_s": statistics.median(v), "min_s": min(v)} for name, v in seconds.items()
    }
    for name in trainers:
        if name != "plain":
            result[f"{name}_over_plain"] = round(
                result[name]["median_s"] / result["plain"]["median_s"], 4
            )
    return result


class TrivialDetector(torch.nn.Module):
    """A model whose forward costs next to nothing, so a step costs its bookkeeping."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, images: list[dict]) -> dict[str, torch.Tensor]:
        return {"loss_cls": self.weight[0] * len(images), "loss_box_reg": self.weight[1] ** 2}


def time_loaders(cfg, num_batches: int) -> dict:
    """Microseconds per batch drawn from a plain and a mixed loader (pass-through mapper)."""
    dicts = [{"index": i, "width": 64, "height": 48} for i in range(256)]
    total = cfg.SOLVER.IMS_PER_BATCH
    loaders = {
        "plain": build_detection_train_loader(
            dicts, mapper=lambda d: d, total_batch_size=total, num_workers=0
        ),
        "mixed": build_mixed_train_loader(
            dicts,
            dicts,
            human_mapper=lambda d: d,
            pseudo_mapper=lambda d: d,
            total_batch_size=total,
            pseudo_ratio=0.5,
            seed=0,
            num_workers=0,
        ),
    }
    result = {}
    for name, loader in loaders.items():
        iterator = iter(loader)
        next(iterator)
        started = time.perf_counter()
        for _ in range(num_batches):
            next(iterator)
        result[name] = {"us_per_batch": 1e6 * (time.perf_counter() - started) / num_batches}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="model and batch config (YAML)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[160, 320], help="image sizes (pixels, square)"
    )
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per trainer and size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON result file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="160 px only, 5 rounds, 1 warm-up")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.warmup = args.sizes[:1], 5, 1
    # One thread by default: on a CPU shared with other jobs, OpenMP threads that wait for each
    # other make every op slow by a near-constant amount, which would hide the real compute.
    torch.set_num_threads(args.threads)

    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(args.config)
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    # A small rate: the same batch is seen every step, and the step cost does not depend on it.
    lr = 1e-4

    steps = {}
    for size in args.sizes:
        cfg.SSDET.AUGMENT.OUTPUT_SIZE = (size, size)
        torch.manual_seed(0)
        steps[str(size)] = time_trainers(
            build_model(cfg), synthetic_batch(cfg), args.rounds, args.warmup, lr
        )
    bookkeeping = time_trainers(
        TrivialDetector(), [{}] * cfg.SOLVER.IMS_PER_BATCH, rounds=300, warmup=10, lr=lr
    )
    bookkeeping = {
        name: {"median_us": 1e6 * bookkeeping[name]["median_s"]} for name in ("plain", "student")
    }
    loaders = time_loaders(cfg, num_batches=2000)
    ratio = steps[str(args.sizes[0])]["student_over_plain"]
    result = {
        "config": os.path.relpath(args.config, REPO),
        "images_per_step": cfg.SOLVER.IMS_PER_BATCH,
        "rounds": args.rounds,
        "steps_by_image_size": steps,
        "student_over_plain": ratio,
        "target_student_over_plain": TARGET_STUDENT_OVER_PLAIN,
        "meets_target": ratio <= TARGET_STUDENT_OVER_PLAIN,
        "bookkeeping_trivial_model": bookkeeping,
        "loaders": loaders,
        "device": cfg.MODEL.DEVICE,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    atomic_write_json(args.output, result)
    for size, r in steps.items():
        print(
            f"{size} px: plain {r['plain']['median_s'] * 1e3:7.1f} ms, student "
            f"{r['student']['median_s'] * 1e3:7.1f} ms per step (median of {args.rounds}): "
            f"student / plain = {r['student_over_plain']:.3f} (two forwards: "
            f"{r['student_two_forwards']['median_s'] * 1e3:.1f} ms, "
            f"{r['student_two_forwards_over_plain']:.3f})"
        )
    print(
        f"target at {args.sizes[0]} px: <= {TARGET_STUDENT_OVER_PLAIN}\n"
        f"bookkeeping (trivial model): plain {bookkeeping['plain']['median_us']:.0f} us, "
        f"student {bookkeeping['student']['median_us']:.0f} us per step\n"
        f"loaders: plain {loaders['plain']['us_per_batch']:.0f} us/batch, "
        f"mixed {loaders['mixed']['us_per_batch']:.0f} us/batch\n"
        f"wrote {args.output}"
    )
    # Timings on a shared machine are noisy: the result records whether the target was met, and
    # the run fails only on errors.
    return 0


if __name__ == "__main__":
    sys.exit(main())
