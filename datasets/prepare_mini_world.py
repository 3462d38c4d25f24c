#!/usr/bin/env python
"""Generate the mini world (mini-COCO and mini-ImageNet) under the datasets root.

A no-op when the world is already there with the same seed and options; see datasets/README.md.

    python datasets/prepare_mini_world.py [--root DIR] [--seed 0] [--imagenet-domain coco|shifted]
        [--tiny] [--force]
"""

import argparse

from ssdet.data.datasets import datasets_root
from ssdet.data.mini_world import IMAGENET_DOMAINS, generate_mini_world


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=datasets_root(),
        help="datasets root (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the world's seed")
    parser.add_argument("--num-train", type=int, help="mini-COCO training scenes")
    parser.add_argument("--num-val", type=int, help="mini-COCO validation scenes")
    parser.add_argument(
        "--imagenet-train-per-class", type=int, help="mini-ImageNet training images per class"
    )
    parser.add_argument(
        "--imagenet-val-per-class", type=int, help="mini-ImageNet validation images per class"
    )
    parser.add_argument(
        "--imagenet-domain",
        choices=sorted(IMAGENET_DOMAINS),
        default="coco",
        help="mini-ImageNet's relation to mini-COCO: 'coco' (default; mini-COCO's visual world, "
        "as ImageNet relates to COCO) or 'shifted' (a far style, for stress tests)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the very small world the unit tests use"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=2,
        help="rendering processes (output does not depend on it)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if present")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    generate_mini_world(
        args.root,
        seed=args.seed,
        tiny=args.tiny,
        num_train=args.num_train,
        num_val=args.num_val,
        imagenet_train_per_class=args.imagenet_train_per_class,
        imagenet_val_per_class=args.imagenet_val_per_class,
        imagenet_options={"domain": args.imagenet_domain},
        num_workers=args.num_workers,
        force=args.force,
    )


if __name__ == "__main__":
    main()
