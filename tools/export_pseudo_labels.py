#!/usr/bin/env python
"""Export a pseudo-label store as COCO JSON, or import COCO JSON pseudo labels as a store, with the
image and category ids of the labeled dataset, so that pycocotools reads them against its own
annotation file.

    python tools/export_pseudo_labels.py export --store output/mini/pseudo_labels/store \\
        --output pseudo.json --dataset mini_coco_train_remainder
    python tools/export_pseudo_labels.py export --store STORE --output pseudo.json  # image folder
    python tools/export_pseudo_labels.py import --json results.json --output store/ \\
        --dataset my_unlabeled

An image folder has no ids of its own: its export uses the store's listing index and 1..C, and
records them in pseudo.images.json beside it (pass it back as --image-ids or --images). Trailing
--config FILE [KEY VALUE ...] registers the datasets a config names (SSDET.DATA.REGISTER, the
<train>_remainder sets). See ssdet/data/pseudo_labels/coco.py.
"""

import argparse

import ssdet  # noqa: F401  (registers ssdet's datasets)
from ssdet.data.pseudo_labels.coco import export_pseudo_labels, import_pseudo_labels
from ssdet.engine.defaults import load_cfg
from ssdet.utils.errors import exit_on_input_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="store -> COCO JSON")
    export.add_argument("--store", required=True, help="pseudo-label store directory")
    export.add_argument("--output", required=True, help="the JSON file to write")
    export.add_argument("--dataset", default="", help="registered dataset whose ids to keep")
    export.add_argument("--image-ids", default="", help="COCO file of the ids (instead)")
    export.add_argument(
        "--annotations",
        action="store_true",
        help="a COCO annotation file with scores (default: COCO results)",
    )
    export.add_argument(
        "--score-thresh", type=float, default=0.0, help="only boxes scoring >= this"
    )

    imports = commands.add_parser("import", help="COCO JSON -> store")
    imports.add_argument(
        "--json", required=True, help="COCO results, or a COCO annotation file with scores"
    )
    imports.add_argument("--output", required=True, help="the store directory to create")
    imports.add_argument("--dataset", default="", help="registered dataset whose ids it uses")
    imports.add_argument("--images", default="", help="COCO file of images and categories")
    imports.add_argument("--image-root", default="", help="folder of the images' file names")
    imports.add_argument("--overwrite", action="store_true", help="replace an existing store")

    for command in (export, imports):
        command.add_argument("--config", default="", help="register the datasets it names")
        command.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    if args.opts and not args.config:
        parser.error(f"unrecognized arguments: {' '.join(args.opts)} (overrides need --config)")
    return args


def main(args: argparse.Namespace) -> None:
    if args.config:
        load_cfg(args.config, args.opts)
    if args.command == "export":
        written = export_pseudo_labels(
            args.store,
            args.output,
            dataset=args.dataset or None,
            image_ids_json=args.image_ids or None,
            annotations=args.annotations,
            score_thresh=args.score_thresh,
        )
        for path in written:
            print(f"wrote {path}")
    else:
        store = import_pseudo_labels(
            args.json,
            args.output,
            dataset=args.dataset or None,
            images_json=args.images or None,
            image_root=args.image_root,
            overwrite=args.overwrite,
        )
        print(f"wrote {store.path}: {store.num_images} images, {store.num_boxes} boxes")
        print(f"Train a student on it with SSDET.PSEUDO_LABELS.STORE {store.path}")


if __name__ == "__main__":
    with exit_on_input_error():
        main(parse_args())
