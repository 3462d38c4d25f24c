#!/usr/bin/env python
"""Speed of the augmentation policies S1..S4 through the full train mapper, per CPU core.

    python benchmarks/bench_augment.py [--num-images 200] [--trials 5000] [--output JSON]

Generates COCO-like inputs (640 x 480 JPEGs with several boxes) into a temporary directory, then
maps each image with Detectron2's default train mapper (ResizeShortestEdge((640..800), 1333) +
flip, the "D2" policy) and with ``PolicyDatasetMapper`` for S1..S4 (640 x 640 output), JPEG
decoding included, round-robin in one process with one thread, so the numbers are per core and
the policies share the machine's state. Then runs the box-consistency trials of
``ssdet.data.augment.checks``. Writes JSON (default ``benchmarks/results/augment.json``) and prints
a table.
"""

import argparse
import os
import platform
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode

from ssdet.config import add_ssdet_config
from ssdet.data.augment import PolicyDatasetMapper
from ssdet.data.augment.checks import run_box_consistency_trials
from ssdet.utils.io import atomic_write_json

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "results", "augment.json")
POLICIES = ("D2", "S1", "S2", "S3", "S4")
IMAGE_SIZE = (480, 640)
# Detectron2's RetinaNet training resize (configs/Base-RetinaNet.yaml, here and in the model zoo).
D2_MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)
# The per-image cost of S4 should stay within this factor of Detectron2's default mapper.
TARGET_S4_OVER_D2 = 2.0


def make_dataset(root: str, num_images: int, seed: int = 0) -> list[dict]:
    """Write ``num_images`` deterministic 640 x 480 JPEGs with 3-8 boxes each; return their dicts.

    The images are smooth gradients with textured rectangles and noise, so that JPEG decoding
    costs about what it costs on photographs of that size.
    """
    rng = np.random.RandomState(seed)
    height, width = IMAGE_SIZE
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dicts = []
    for index in range(num_images):
        base = rng.uniform(40, 200, size=3) + np.stack(
            [xs / width * rng.uniform(-60, 60), ys / height * rng.uniform(-60, 60), xs * 0], -1
        )
        image = base + rng.normal(0, 12, size=(height, width, 3))
        annotations = []
        for _ in range(rng.randint(3, 9)):
            box_w, box_h = rng.randint(16, 320), rng.randint(16, 240)
            x0, y0 = rng.randint(0, width - box_w), rng.randint(0, height - box_h)
            texture = np.sin(xs[:box_h, :box_w, None] * rng.uniform(0.05, 0.5)) * 40
            image[y0 : y0 + box_h, x0 : x0 + box_w] = rng.uniform(0, 255, size=3) + texture
            annotations.append(
                {
                    "bbox": [int(x0), int(y0), int(box_w), int(box_h)],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": int(rng.randint(80)),
                    "iscrowd": 0,
                }
            )
        file_name = os.path.join(root, f"{index:06d}.jpg")
        cv2.imwrite(file_name, np.clip(image, 0, 255).astype(np.uint8))
        dicts.append(
            {
                "file_name": file_name,
                "image_id": index,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    return dicts


def build_mappers() -> dict:
    mappers = {}
    for policy in POLICIES:
        cfg = get_cfg()
        add_ssdet_config(cfg)
        cfg.INPUT.MIN_SIZE_TRAIN = D2_MIN_SIZE_TRAIN
        cfg.SSDET.AUGMENT.POLICY = policy
        cfg.SSDET.AUGMENT.OUTPUT_SIZE = (640, 640)
        if policy == "D2":
            # Detectron2's own mapper and augmentation, untouched.
            mappers[policy] = DatasetMapper(cfg, is_train=True)
        else:
            mappers[policy] = PolicyDatasetMapper(cfg, is_train=True)
    return mappers


def time_mappers(mappers: dict, dataset_dicts: list[dict], warmup: int = 5) -> dict:
    """Seconds and output statistics per policy, images visited round-robin across policies."""
    stats = {name: {"seconds": 0.0, "pixels": [], "instances": 0} for name in mappers}
    for dataset_dict in dataset_dicts[:warmup]:
        for mapper in mappers.values():
            mapper(dataset_dict)
    names = list(mappers)
    for index, dataset_dict in enumerate(dataset_dicts):
        # Rotate the order so that no policy always runs right after another one's cache misses.
        for name in names[index % len(names) :] + names[: index % len(names)]:
            np.random.seed(index)
            started = time.perf_counter()
            output = mappers[name](dataset_dict)
            stats[name]["seconds"] += time.perf_counter() - started
            stats[name]["pixels"].append(output["image"].shape[1:])
            stats[name]["instances"] += len(output["instances"])
    return stats


def time_decode(dataset_dicts: list[dict]) -> float:
    """Mean seconds to read one image as the mappers do (JPEG decode, BGR)."""
    started = time.perf_counter()
    for dataset_dict in dataset_dicts:
        utils.read_image(dataset_dict["file_name"], format="BGR")
    return (time.perf_counter() - started) / len(dataset_dicts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=200, help="images per policy")
    parser.add_argument("--trials", type=int, default=5000, help="box-consistency trials")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON result file")
    parser.add_argument("--quick", action="store_true", help="40 images, 500 trials")
    args = parser.parse_args()
    if args.quick:
        args.num_images, args.trials = 40, 500

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="bench_augment_") as root:
        dataset_dicts = make_dataset(root, args.num_images)
        mappers = build_mappers()
        decode_seconds = time_decode(dataset_dicts)
        stats = time_mappers(mappers, dataset_dicts)

    policies = {}
    for name, stat in stats.items():
        seconds_per_image = stat["seconds"] / len(dataset_dicts)
        policies[name] = {
            "images_per_s_per_core": 1.0 / seconds_per_image,
            "ms_per_image": 1000.0 * seconds_per_image,
            "mean_output_hw": [float(v) for v in np.mean(stat["pixels"], axis=0)],
            "mean_instances": stat["instances"] / len(dataset_dicts),
        }
    ratio = policies["S4"]["ms_per_image"] / policies["D2"]["ms_per_image"]
    consistency = run_box_consistency_trials(args.trials)
    result = {
        "benchmark": "augment",
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "threads": {"torch": torch.get_num_threads(), "cv2": cv2.getNumThreads()},
        "num_images": len(dataset_dicts),
        "input_hw": list(IMAGE_SIZE),
        "jpeg_decode_ms": 1000.0 * decode_seconds,
        "policies": policies,
        "s4_over_d2_cost": ratio,
        "target_s4_over_d2_cost": TARGET_S4_OVER_D2,
        "meets_target": ratio <= TARGET_S4_OVER_D2,
        "box_consistency": consistency,
    }
    atomic_write_json(args.output, result)

    print(
        f"{len(dataset_dicts)} images {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} JPEG, 1 thread; "
        f"JPEG decode {1000 * decode_seconds:.1f} ms/image"
    )
    print(f"{'policy':<8}{'img/s/core':>12}{'ms/img':>9}{'output HxW':>14}{'boxes/img':>11}")
    for name, row in policies.items():
        height, width = row["mean_output_hw"]
        print(
            f"{name:<8}{row['images_per_s_per_core']:>12.1f}{row['ms_per_image']:>9.1f}"
            f"{f'{height:.0f}x{width:.0f}':>14}{row['mean_instances']:>11.2f}"
        )
    print(f"S4 / D2 cost: {ratio:.2f} (target <= {TARGET_S4_OVER_D2})")
    print(
        f"box consistency: {consistency['trials']} trials, {consistency['failures']} failures, "
        f"max error {consistency['max_error_px']:.2f} px over {consistency['compared']} compared"
    )
    print(f"wrote {args.output}")
    return 0 if consistency["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
