#!/usr/bin/env python
"""Draw an image's pseudo labels: the boxes the student's filter keeps and drops, with scores,
and the image's ground truth where a dataset has it. One PNG per image, named <image id>.png.

    python tools/visualize_pseudo_labels.py --store output/mini/pseudo_labels/store \\
        --image 12 n01440764/0003.jpg --output output/mini/pseudo_vis
    python tools/visualize_pseudo_labels.py --config configs/mini/STUDENT.yaml --num-images 8 \\
        --output vis/ SSDET.PSEUDO_LABELS.SCORE_THRESH 0.3

The filter is the config's SSDET.PSEUDO_LABELS.* (Detectron2's and ssdet's defaults without
--config); trailing KEY VALUE pairs override it, as in Detectron2's tools. --store defaults to the
config's SSDET.PSEUDO_LABELS.STORE. See ssdet/data/pseudo_labels/visualize.py.
"""

import argparse

import ssdet  # noqa: F401  (registers ssdet's datasets, whose ground truth is looked up)
from ssdet.data.pseudo_labels import PseudoLabelFilter
from ssdet.data.pseudo_labels.visualize import visualize_pseudo_labels
from ssdet.engine.defaults import load_cfg
from ssdet.utils.errors import InputError, exit_on_input_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="", help="the student's config (for the filter)")
    parser.add_argument("--store", default="", help="pseudo-label store directory")
    parser.add_argument("--image", nargs="+", default=[], help="image ids or file names")
    parser.add_argument("--num-images", type=int, default=0, help="also the store's first N")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument(
        "--ground-truth",
        default=None,
        help="COCO instances JSON of the images (default: the registered dataset's, if any)",
    )
    parser.add_argument("--size", type=int, default=640, help="longer side of a drawing, pixels")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if not args.image and args.num_images <= 0:
        parser.error("name the images to draw: --image ID_OR_FILE ... and/or --num-images N")
    return args


def main(args: argparse.Namespace) -> None:
    cfg = load_cfg(args.config, args.opts, optional=True)
    store = args.store or cfg.SSDET.PSEUDO_LABELS.STORE
    if not store:
        raise InputError("No pseudo-label store: pass --store DIR or a --config that names one.")
    written = visualize_pseudo_labels(
        store,
        args.output,
        PseudoLabelFilter.from_config(cfg),
        images=args.image,
        num_images=args.num_images,
        ground_truth=args.ground_truth,
        size=args.size,
    )
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    with exit_on_input_error():
        main(parse_args())
