#!/usr/bin/env python
"""Draw training images through the augmentation policies, boxes on, as one PNG grid.

Rows are images; the first column is the image as loaded, the others one policy each, mapped by
the train mapper (``PolicyDatasetMapper``) exactly as training sees them.

    python tools/visualize_augment.py --config CFG --dataset mini_coco_train \\
        --policies S1 S2 S3 S4 --num-images 4 --output grid.png [--seed 0]
    python tools/visualize_augment.py --coco-json instances.json --image-root images/ \\
        --policies S1 S4 --output grid.png SSDET.AUGMENT.OUTPUT_SIZE "(320, 320)"

Trailing ``KEY VALUE`` pairs override the config, as in Detectron2's tools.
"""

import argparse
import os

import cv2
import numpy as np
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data.datasets import load_coco_json

import ssdet  # noqa: F401  (registers ssdet's datasets with Detectron2)
from ssdet.config import add_ssdet_config
from ssdet.data.augment import POLICY_NAMES, PolicyDatasetMapper
from ssdet.data.augment.mapper import annotation_boxes
from ssdet.utils.io import atomic_open

_HEADER_HEIGHT = 28
_BOX_COLOR = (0, 255, 0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default="", help="config file (default: Detectron2's + ssdet's)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="registered dataset name, e.g. mini_coco_train")
    source.add_argument("--coco-json", help="COCO-format annotation file (with --image-root)")
    parser.add_argument("--image-root", help="directory of the --coco-json images")
    parser.add_argument("--policies", nargs="+", default=["S1", "S2", "S3", "S4"])
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--output", default="augment_grid.png", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0, help="seeds np.random for each cell")
    parser.add_argument("--cell-height", type=int, default=320, help="height of a grid cell, px")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    if args.coco_json and not args.image_root:
        parser.error("--coco-json needs --image-root")
    unknown = [p for p in args.policies if p not in POLICY_NAMES]
    if unknown:
        parser.error(f"unknown policies {unknown}; valid policies: {', '.join(POLICY_NAMES)}")
    return args


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = get_cfg()
    add_ssdet_config(cfg)
    if args.config:
        # Plain YAML only: Detectron2's default would run Python that the file names.
        cfg.merge_from_file(args.config, allow_unsafe=False)
    cfg.merge_from_list(args.opts)
    return cfg


def load_dataset(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """The dataset dicts to draw and the class names (empty when the dataset has none)."""
    if args.coco_json:
        # The name keys the metadata (class names) that load_coco_json records for the file.
        name = f"visualize_augment:{os.path.abspath(args.coco_json)}"
        dicts = load_coco_json(args.coco_json, args.image_root, name)
    else:
        dicts = DatasetCatalog.get(args.dataset)
        name = args.dataset
    return dicts, list(MetadataCatalog.get(name).get("thing_classes", []))


def to_bgr(image: np.ndarray, image_format: str) -> np.ndarray:
    """(H, W, C) image in ``image_format`` (Detectron2's INPUT.FORMAT) as BGR for drawing."""
    if image_format == "RGB":
        return np.ascontiguousarray(image[:, :, ::-1])
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image)


def render_cell(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: list[int],
    class_names: list[str],
    height: int,
    width: int,
) -> np.ndarray:
    """Fit a BGR image in a (height, width) cell, keeping its aspect ratio, and draw its boxes.

    Boxes are drawn after resizing so that lines and labels keep their size whatever the image's.

    Args:
        image: (H, W, 3) BGR uint8.
        boxes: (N, 4) XYXY boxes in ``image`` coordinates.
        classes: N class indices into ``class_names`` (shown as numbers when out of range).
        class_names: the dataset's class names.
        height, width: cell size in pixels; the cell is padded with dark gray.
    """
    scale = min(height / image.shape[0], width / image.shape[1])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    cell = np.full((height, width, 3), 64, dtype=np.uint8)
    cell[: size[1], : size[0]] = cv2.resize(image, size, interpolation=interp)
    for (x0, y0, x1, y1), category in zip(
        (boxes * scale).round().astype(int), classes, strict=True
    ):
        cv2.rectangle(cell, (x0, y0), (x1, y1), _BOX_COLOR, 1)
        label = class_names[category] if category < len(class_names) else str(category)
        cv2.putText(
            cell, label, (x0 + 2, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _BOX_COLOR, 1
        )
    return cell


def make_grid(rows: list[list[np.ndarray]], titles: list[str]) -> np.ndarray:
    """Assemble equal-sized BGR cells into a grid under a header row of column titles."""
    cell_width = rows[0][0].shape[1]
    header = np.full((_HEADER_HEIGHT, cell_width * len(titles), 3), 255, dtype=np.uint8)
    for column, title in enumerate(titles):
        cv2.putText(
            header,
            title,
            (column * cell_width + 8, 20),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6,
            (0, 0, 0),
            1,
        )
    return np.vstack([header, *[np.hstack(row) for row in rows]])


def main() -> None:
    args = parse_args()
    cfg = setup_cfg(args)
    dataset_dicts, class_names = load_dataset(args)
    image_format = cfg.INPUT.FORMAT
    mappers = {}
    for policy in args.policies:
        policy_cfg = cfg.clone()
        policy_cfg.SSDET.AUGMENT.POLICY = policy
        mappers[policy] = PolicyDatasetMapper(policy_cfg, is_train=True)

    cell = (args.cell_height, round(args.cell_height * 4 / 3))
    rows = []
    for index, dataset_dict in enumerate(dataset_dicts[: args.num_images]):
        original = utils.read_image(dataset_dict["file_name"], format="BGR")
        annotations = [a for a in dataset_dict.get("annotations", []) if a.get("iscrowd", 0) == 0]
        row = [
            render_cell(
                original,
                annotation_boxes(annotations),
                [a["category_id"] for a in annotations],
                class_names,
                *cell,
            )
        ]
        for column, mapper in enumerate(mappers.values()):
            # One draw per cell: same seed, same grid; policies do not share their draws.
            np.random.seed(args.seed + index * len(mappers) + column)
            output = mapper(dataset_dict)
            image = to_bgr(output["image"].permute(1, 2, 0).numpy(), image_format)
            instances = output["instances"]
            row.append(
                render_cell(
                    image,
                    instances.gt_boxes.tensor.numpy(),
                    instances.gt_classes.tolist(),
                    class_names,
                    *cell,
                )
            )
        rows.append(row)
    if not rows:
        raise SystemExit("the dataset has no images")

    grid = make_grid(rows, ["original", *args.policies])
    ok, png = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    with atomic_open(args.output, "wb") as f:
        f.write(png.tobytes())
    print(f"wrote {args.output} ({len(rows)} images x {len(args.policies)} policies)")


if __name__ == "__main__":
    main()
