#!/usr/bin/env python
"""COCO box evaluation time: faster-coco-eval versus pycocotools behind Detectron2's COCOEvaluator.

    python benchmarks/bench_coco_eval.py [--num-images 5000] [--repeats 2] [--output JSON] [--quick]

Writes a synthetic COCO-val-sized annotation file (80 categories with COCO's ids, about 7 boxes per
image over every area range, a few crowds) and detector-like outputs (RetinaNet's 100 detections
per image: jittered ground truth, some with the wrong class, and background boxes), then times
``evaluate()`` of ssdet's ``FastCOCOEvaluator`` (faster-coco-eval's ``COCOeval_faster``) and of
Detectron2's ``COCOEvaluator(use_fast_impl=False)`` (pycocotools' ``COCOeval``), which is what
``COCOEvaluator`` runs when ``detectron2._C`` is not built: the whole ``evaluate()`` (Detectron2's
conversion, ``loadRes`` and the evaluation), and the ``COCOeval`` part alone (``evaluate``,
``accumulate``, ``summarize`` of the same loaded detections). Both backends evaluate the same
outputs, alternating in one process and one thread, so the ratio holds on a busy machine; the
evaluators' AP results are checked to agree (to 1e-12 relative: the two sum the same precisions in
another order, which may change a float's last bit). Writes JSON (default
``benchmarks/results/coco_eval.json``) and prints a table.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssdet.evaluation import FastCOCOEvaluator, fast_cocoeval_available
from ssdet.evaluation.coco import COCOeval_faster
from ssdet.utils.io import atomic_write_json

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "results", "coco_eval.json")
IMAGE_HW = (480, 640)
# COCO's 80 category ids: 1..90 without the 10 that the 2014 paper dropped.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
BOXES_PER_IMAGE = 7
DETECTIONS_PER_IMAGE = 100  # Detectron2's TEST.DETECTIONS_PER_IMAGE
BACKENDS = {
    "faster_coco_eval": lambda name: FastCOCOEvaluator(name),
    "pycocotools": lambda name: COCOEvaluator(name, use_fast_impl=False),
}
COCOEVAL = {"faster_coco_eval": COCOeval_faster, "pycocotools": COCOeval}


def _random_boxes(rng: np.random.RandomState, n: int) -> np.ndarray:
    """``n`` XYWH boxes inside the image, sides log-uniform in 4..400 px (small to large)."""
    height, width = IMAGE_HW
    wh = np.exp(rng.uniform(np.log(4), np.log(400), size=(n, 2)))
    wh = np.minimum(wh, [width - 1, height - 1])
    xy = rng.uniform(0, 1, size=(n, 2)) * ([width, height] - wh)
    return np.concatenate([xy, wh], axis=1)


def write_dataset(path: str, num_images: int, seed: int = 0) -> dict:
    rng = np.random.RandomState(seed)
    height, width = IMAGE_HW
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append(
            {"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width}
        )
        for box in _random_boxes(rng, rng.poisson(BOXES_PER_IMAGE)):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
                    "bbox": box.tolist(),
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(rng.rand() < 0.01),
                }
            )
    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in COCO_CATEGORY_IDS],
    }
    with open(path, "w") as f:
        json.dump(dataset, f)
    return dataset


def make_outputs(dataset: dict, seed: int = 1) -> tuple[list[dict], list[dict]]:
    """Per image, the model inputs and outputs that ``COCOEvaluator.process`` takes."""
    rng = np.random.RandomState(seed)
    contiguous = {c: i for i, c in enumerate(COCO_CATEGORY_IDS)}
    by_image: dict[int, list[dict]] = {}
    for ann in dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    inputs, outputs = [], []
    for image in dataset["images"]:
        anns = by_image.get(image["id"], [])
        gt = np.array([a["bbox"] for a in anns]).reshape(-1, 4)
        gt_classes = np.array([contiguous[a["category_id"]] for a in anns], dtype=np.int64)
        copies = rng.randint(1, 4, size=len(anns))
        hits = np.repeat(gt, copies, axis=0)
        hits += rng.normal(0, 0.1, size=hits.shape) * hits[:, [2, 3, 2, 3]]
        hit_classes = np.repeat(gt_classes, copies)
        wrong = rng.rand(len(hit_classes)) < 0.2
        hit_classes[wrong] = rng.randint(len(COCO_CATEGORY_IDS), size=int(wrong.sum()))
        background = _random_boxes(rng, max(0, DETECTIONS_PER_IMAGE - len(hits)))
        boxes = np.concatenate([hits, background])[:DETECTIONS_PER_IMAGE]
        classes = np.concatenate(
            [hit_classes, rng.randint(len(COCO_CATEGORY_IDS), size=len(background))]
        )[:DETECTIONS_PER_IMAGE]
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + np.abs(boxes[:, 2:])], axis=1)
        instances = Instances(IMAGE_HW)
        instances.pred_boxes = Boxes(torch.as_tensor(xyxy, dtype=torch.float32))
        instances.scores = torch.as_tensor(rng.uniform(0.05, 1, len(xyxy)), dtype=torch.float32)
        instances.pred_classes = torch.as_tensor(classes)
        inputs.append({"image_id": image["id"]})
        outputs.append({"instances": instances})
    return inputs, outputs


def time_evaluate(name: str, backend: str, inputs: list, outputs: list) -> tuple[float, dict]:
    """Seconds of one ``evaluate()`` (outputs ``process()``ed before the clock starts)."""
    evaluator = BACKENDS[backend](name)
    evaluator.reset()
    evaluator.process(inputs, outputs)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' and its twin's summaries
        started = time.perf_counter()
        results = evaluator.evaluate()
        seconds = time.perf_counter() - started
    return seconds, results["bbox"]


def time_cocoeval(backend: str, gt: COCO, detections: list[dict]) -> float:
    """Seconds of ``COCOeval``'s evaluate, accumulate and summarize (``loadRes`` not timed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds fields to the dicts it gets: each evaluation gets copies.
        coco_eval = COCOEVAL[backend](gt, gt.loadRes([dict(d) for d in detections]), "bbox")
        started = time.perf_counter()
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=5000, help="images (COCO val: 5000)")
    parser.add_argument("--repeats", type=int, default=2, help="evaluations per backend")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="500 images, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.num_images, args.repeats = 500, 1
    if not fast_cocoeval_available():
        print("error: faster-coco-eval is not installed (pip install faster-coco-eval)")
        return 1

    torch.set_num_threads(1)
    name = "bench_coco_eval"
    with tempfile.TemporaryDirectory(prefix="bench_coco_eval_") as root:
        json_file = os.path.join(root, "instances.json")
        dataset = write_dataset(json_file, args.num_images)
        register_coco_instances(name, {}, json_file, root)
        DatasetCatalog.get(name)  # the dataset id -> contiguous id mapping, as training sets it
        inputs, outputs = make_outputs(dataset)
        # COCOEvaluator's own conversion to COCO's results format, with the dataset's ids.
        detections = [
            {**d, "category_id": COCO_CATEGORY_IDS[d["category_id"]]}
            for i, o in zip(inputs, outputs, strict=True)
            for d in instances_to_coco_json(o["instances"], i["image_id"])
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(json_file)
        seconds = {backend: [] for backend in BACKENDS}
        cocoeval_seconds = {backend: [] for backend in BACKENDS}
        results = {}
        for repeat in range(args.repeats):
            # Alternate which runs first, so neither always finds the other's caches warm.
            order = list(BACKENDS) if repeat % 2 == 0 else list(reversed(BACKENDS))
            for backend in order:
                elapsed, results[backend] = time_evaluate(name, backend, inputs, outputs)
                seconds[backend].append(elapsed)
                cocoeval_seconds[backend].append(time_cocoeval(backend, gt, detections))

    summary = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    fast, official = (np.array([results[b][k] for k in summary]) for b in BACKENDS)
    max_relative_difference = float(
        np.max(np.abs(fast - official) / np.maximum(np.abs(official), 1e-12))
    )
    identical = max_relative_difference <= 1e-12
    median = {backend: float(np.median(s)) for backend, s in seconds.items()}
    ratio = median["pycocotools"] / median["faster_coco_eval"]
    cocoeval_median = {backend: float(np.median(s)) for backend, s in cocoeval_seconds.items()}
    cocoeval_ratio = cocoeval_median["pycocotools"] / cocoeval_median["faster_coco_eval"]
    result = {
        "benchmark": "coco_eval",
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "threads": {"torch": torch.get_num_threads()},
        "num_images": args.num_images,
        "num_annotations": len(dataset["annotations"]),
        "num_detections": sum(len(o["instances"]) for o in outputs),
        "repeats": args.repeats,
        "evaluate_s": {b: {"median": median[b], "all": seconds[b]} for b in BACKENDS},
        "pycocotools_over_faster_coco_eval": ratio,
        "cocoeval_s": {
            b: {"median": cocoeval_median[b], "all": cocoeval_seconds[b]} for b in BACKENDS
        },
        "cocoeval_pycocotools_over_faster_coco_eval": cocoeval_ratio,
        "ap_max_relative_difference": max_relative_difference,
        "identical_ap": identical,
        "ap": {b: {k: results[b][k] for k in summary} for b in BACKENDS},
    }
    atomic_write_json(args.output, result)

    print(
        f"{args.num_images} images, {result['num_annotations']} boxes, "
        f"{result['num_detections']} detections; {args.repeats} evaluation(s) each, 1 thread"
    )
    print(f"{'backend':<18}{'evaluate() s':>14}{'COCOeval s':>12}")
    for backend in BACKENDS:
        print(f"{backend:<18}{median[backend]:>14.2f}{cocoeval_median[backend]:>12.2f}")
    print(
        f"pycocotools / faster-coco-eval: {ratio:.1f}x evaluate(), {cocoeval_ratio:.1f}x "
        f"COCOeval; AP max relative difference {max_relative_difference:.1e}"
    )
    print(f"wrote {args.output}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
