#!/usr/bin/env python
"""Listing an ImageNet-size folder: first listing (scandir, no image opened) and cached reopen.

    python benchmarks/bench_image_folder.py [--num-images 1281167] [--num-classes 1000] [--quick]

Files are empty (listing never opens them), created once in a temporary folder and removed after.
Writes benchmarks/results/image_folder.json.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from ssdet.data import ImageFolderListing
from ssdet.utils.io import atomic_write_json

HERE = os.path.dirname(os.path.abspath(__file__))


def make_folder(root: str, num_images: int, num_classes: int) -> None:
    per_class = np.full(num_classes, num_images // num_classes)
    per_class[: num_images % num_classes] += 1
    for c, n in enumerate(per_class):
        wnid = f"n{c:08d}"
        os.makedirs(os.path.join(root, wnid))
        for i in range(n):
            open(os.path.join(root, wnid, f"{wnid}_{i}.JPEG"), "wb").close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-images", type=int, default=1_281_167)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="20k images")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "image_folder.json"))
    args = parser.parse_args()
    num_images = 20_000 if args.quick else args.num_images
    work = tempfile.mkdtemp(prefix="ssdet-bench-folder-")
    try:
        root, cache = os.path.join(work, "train"), os.path.join(work, "cache")
        started = time.perf_counter()
        make_folder(root, num_images, args.num_classes)
        create_s = time.perf_counter() - started

        started = time.perf_counter()
        listing = ImageFolderListing(root, cache_dir=cache)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        cached = ImageFolderListing(root, cache_dir=cache)
        cached_s = time.perf_counter() - started
        assert len(cached) == len(listing) == num_images

        index = np.random.RandomState(0).randint(0, num_images, 100_000)
        started = time.perf_counter()
        for i in index:
            cached[int(i)]
        access_us = (time.perf_counter() - started) / len(index) * 1e6
        result = {
            "benchmark": "image_folder",
            "num_images": num_images,
            "num_classes": args.num_classes,
            "create_files_s": round(create_s, 1),
            "first_listing_s": round(first_s, 2),
            "cached_listing_s": round(cached_s, 3),
            "item_access_us": round(access_us, 2),
            "listing_array_mb": round(listing.nbytes / 2**20, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write_json(args.output, result)
    for k, v in result.items():
        print(f"{k:>20}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
