#!/usr/bin/env python
"""Draw training images through the augmentation policies, boxes on, as one PNG grid.

Rows are images; the first column is the image as loaded, the others one policy each, mapped by
the train mapper (``PolicyDatasetMapper``) exactly as training sees them. Boxes have one color per
class; under each cell are the ops it drew (AutoAugment's sub-policy and magnitudes, RandAugment's
ops, flip, scale jitter); a caption and a class-color legend head the figure.

    python tools/visualize_augment.py --config CFG --dataset mini_coco_train \\
        --policies S1 S2 S3 S4 --num-images 4 --output grid.png [--seed 0]
    python tools/visualize_augment.py --coco-json instances.json --image-root images/ \\
        --policies S1 S4 --output grid.png SSDET.AUGMENT.OUTPUT_SIZE "(320, 320)"

Trailing ``KEY VALUE`` pairs override the config, as in Detectron2's tools.
"""

import argparse
import dataclasses
import os
import re

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from matplotlib.font_manager import FontProperties

import ssdet  # noqa: F401  (registers ssdet's datasets with Detectron2)
from ssdet.data.augment import (
    POLICY_NAMES,
    AutoAugment,
    PolicyDatasetMapper,
    RandAugment,
    ScaleJitterCrop,
)
from ssdet.data.augment.mapper import annotation_boxes
from ssdet.engine.defaults import load_cfg
from ssdet.utils.errors import exit_on_input_error
from ssdet.utils.io import atomic_open

# Text sizes as fractions of the cell height (Hershey fonts: scale 1.0 is about 22 px tall), so
# that labels stay readable when the grid is shown shrunk to a page's width.
_OPS_SCALE = 1 / 520
_TITLE_SCALE = 1 / 420
_CAPTION_SCALE = 1 / 360
_MIN_FONT_SCALE = 0.3
# Box labels (drawn by Visualizer, in matplotlib's sans-serif): font size in pixels as a fraction
# of the cell height, and its smallest size; about the height of the Hershey text above.
_BOX_LABEL_SIZE = 1 / 20
_MIN_BOX_LABEL_SIZE = 9
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT = (0, 0, 0)
_MUTED = (140, 140, 140)
# One fixed color per class index (Detectron2's palette, BGR), the same in every cell.
_PALETTE = [tuple(int(v) for v in color) for color in colormap(rgb=False, maximum=255)]


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


# A run of text in one color; a line of a text block is a list of them.
Item = tuple[str, tuple[int, int, int]]


class RecordingAugmentationList(T.AugmentationList):
    """Detectron2's ``AugmentationList``, keeping the transform each augmentation gave last."""

    def __init__(self, augs):
        super().__init__(augs)
        self.last_transforms: list[T.Transform] = []

    def __call__(self, aug_input: T.AugInput) -> T.TransformList:
        self.last_transforms = [aug(aug_input) for aug in self.augs]
        return T.TransformList(self.last_transforms)


@dataclasses.dataclass
class Cell:
    """One image of the grid: BGR pixels, its boxes and classes, and the ops that made it.

    Attributes:
        image: (H, W, 3) BGR uint8.
        boxes: (N, 4) XYXY boxes in ``image`` coordinates.
        classes: N class indices.
        ops: text lines naming what was applied (each line a list of colored runs).
    """

    image: np.ndarray
    boxes: np.ndarray
    classes: list[int]
    ops: list[list[Item]]

    def op_text(self) -> list[str]:
        """The ops as plain text, one string per line."""
        return [_join([text for text, _ in line]) for line in self.ops]


def _pieces(texts: list[str]) -> list[str]:
    """The runs of a line as drawn: each after its separator: ", ", or " " after a run that ends
    with its own punctuation ("label:", "phrase,")."""
    return [
        text if k == 0 else (" " if texts[k - 1].endswith((":", ",")) else ", ") + text
        for k, text in enumerate(texts)
    ]


def _join(texts: list[str]) -> str:
    return "".join(_pieces(texts))


def _flat(transform: T.Transform) -> list[T.Transform]:
    return list(transform.transforms) if isinstance(transform, T.TransformList) else [transform]


def describe_policy(augmentations: list[T.Augmentation]) -> str:
    """A short name of a policy's augmentations, e.g. "AutoAugment v0 + flip + jitter 0.8-1.2"."""
    parts = []
    for aug in augmentations:
        if isinstance(aug, AutoAugment):
            parts.append(f"AutoAugment {aug.version}")
        elif isinstance(aug, RandAugment):
            parts.append(f"RandAugment N={aug.num_ops} M={aug.magnitude:g}")
        elif isinstance(aug, T.RandomFlip):
            parts.append("flip")
        elif isinstance(aug, ScaleJitterCrop):
            low, high = aug.scale_range
            parts.append(f"jitter {low:g}-{high:g}")
        elif isinstance(aug, T.ResizeShortestEdge):
            parts.append("resize")
        else:
            parts.append(type(aug).__name__)
    return " + ".join(parts)


def describe_draw(
    augmentations: list[T.Augmentation], transforms: list[T.Transform]
) -> list[list[Item]]:
    """Name what each augmentation did in its last call, given the transforms it returned.

    AutoAugment: the drawn sub-policy and its ops with their magnitude levels (M, 0-10), the ones
    whose probability did not fire in gray; RandAugment: its drawn ops at its magnitude; the flip;
    the scale jitter's factor (of the output size). Other augmentations: their transforms.

    Returns:
        Lines of colored text runs: one line for AutoAugment / RandAugment, one for the rest.
    """
    policy_line: list[Item] = []
    geometry_line: list[Item] = []
    for aug, transform in zip(augmentations, transforms, strict=True):
        steps = [t for t in _flat(transform) if not isinstance(t, T.NoOpTransform)]
        if isinstance(aug, AutoAugment) and aug.last_draw is not None:
            index, ops = aug.last_draw
            policy_line.append((f"sub-policy {index}:", _MUTED))
            for name, prob, level, ran in ops:
                if ran:
                    policy_line.append((f"{name} M{level:g}", _TEXT))
                else:
                    policy_line.append((f"{name} M{level:g} (p{prob:g}: skipped)", _MUTED))
        elif isinstance(aug, RandAugment) and aug.last_draw is not None:
            policy_line.append(("RandAugment:", _MUTED))
            policy_line.extend((f"{name} M{aug.magnitude:g}", _TEXT) for name in aug.last_draw)
        elif isinstance(aug, T.RandomFlip):
            flipped = any(isinstance(t, (T.HFlipTransform, T.VFlipTransform)) for t in steps)
            geometry_line.append(("flip", _TEXT) if flipped else ("no flip", _MUTED))
        elif isinstance(aug, ScaleJitterCrop):
            resizes = [t for t in steps if isinstance(t, T.ResizeTransform)]
            if resizes:
                out_height, out_width = aug.output_size
                scale = max(resizes[0].new_h / out_height, resizes[0].new_w / out_width)
                geometry_line.append((f"scale x{scale:.2f}, crop", _TEXT))
            else:
                geometry_line.append(("no resize, crop", _TEXT))
        else:
            for step in steps:
                if isinstance(step, T.ResizeTransform):
                    geometry_line.append((f"resize to {step.new_w}x{step.new_h}", _TEXT))
                else:
                    geometry_line.append((type(step).__name__.removesuffix("Transform"), _TEXT))
    return [line for line in (policy_line, geometry_line) if line]


def build_mapper(cfg: CfgNode, policy: str) -> PolicyDatasetMapper:
    """The train mapper of ``policy``, recording what its augmentations draw."""
    policy_cfg = cfg.clone()
    policy_cfg.SSDET.AUGMENT.POLICY = policy
    mapper = PolicyDatasetMapper(policy_cfg, is_train=True)
    mapper.augmentations = RecordingAugmentationList(mapper.augmentations.augs)
    return mapper


def original_cell(dataset_dict: dict) -> Cell:
    """The image as loaded, with its non-crowd annotations."""
    image = utils.read_image(dataset_dict["file_name"], format="BGR")
    annotations = [a for a in dataset_dict.get("annotations", []) if a.get("iscrowd", 0) == 0]
    return Cell(
        image,
        annotation_boxes(annotations),
        [a["category_id"] for a in annotations],
        [[(f"as loaded, {image.shape[1]}x{image.shape[0]}", _MUTED)]],
    )


def mapped_cell(mapper: PolicyDatasetMapper, dataset_dict: dict, image_format: str) -> Cell:
    """One image through a mapper of :func:`build_mapper`, with the ops it drew."""
    output = mapper(dataset_dict)
    instances = output["instances"]
    augmentations = mapper.augmentations
    return Cell(
        to_bgr(output["image"].permute(1, 2, 0).numpy(), image_format),
        instances.gt_boxes.tensor.numpy(),
        instances.gt_classes.tolist(),
        describe_draw(augmentations.augs, augmentations.last_transforms),
    )


def font_scale(cell_height: int, fraction: float) -> float:
    """Hershey font scale of a text size given as a fraction of the cell height."""
    return max(_MIN_FONT_SCALE, cell_height * fraction)


def _thickness(scale: float) -> int:
    return max(1, round(scale * 1.6))


def _line_height(scale: float) -> int:
    (_, height), baseline = cv2.getTextSize("Ag", _FONT, scale, _thickness(scale))
    return round((height + baseline) * 1.35)


def class_color(category: int) -> tuple[int, int, int]:
    """The fixed BGR color of a class index."""
    return _PALETTE[category % len(_PALETTE)]


def wrap(lines: list[list[Item]], scale: float, width: int) -> list[list[Item]]:
    """Break lines of text runs so that each fits ``width`` pixels (a run is never split)."""
    thickness = _thickness(scale)
    wrapped = []
    for line in lines:
        current: list[Item] = []
        for item in line:
            candidate = [*current, item]
            text = _join([t for t, _ in candidate])
            if current and cv2.getTextSize(text, _FONT, scale, thickness)[0][0] > width:
                wrapped.append(current)
                current = [item]
            else:
                current = candidate
        if current:
            wrapped.append(current)
    return wrapped


def draw_text(
    canvas: np.ndarray, lines: list[list[Item]], origin: tuple[int, int], scale: float
) -> None:
    """Draw lines of colored runs on ``canvas``, the first line's top-left at ``origin``."""
    thickness = _thickness(scale)
    line_height = _line_height(scale)
    x0, y = origin
    for line in lines:
        y += line_height
        x = x0
        for piece, (_, color) in zip(_pieces([text for text, _ in line]), line, strict=True):
            cv2.putText(
                canvas,
                piece,
                (x, y - line_height // 4),
                _FONT,
                scale,
                color,
                thickness,
                cv2.LINE_AA,
            )
            x += cv2.getTextSize(piece, _FONT, scale, thickness)[0][0]


def render_cell(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: list[int],
    class_names: list[str],
    height: int,
    width: int,
) -> np.ndarray:
    """Fit a BGR image in a (height, width) cell, keeping its aspect ratio, and draw its boxes.

    Boxes are drawn after resizing so that lines and labels keep their size whatever the image's,
    each in its class's fixed color (:func:`class_color`), labels sized to the cell.

    Args:
        image: (H, W, 3) BGR uint8.
        boxes: (N, 4) XYXY boxes in ``image`` coordinates.
        classes: N class indices into ``class_names`` (shown as numbers when out of range).
        class_names: the dataset's class names.
        height, width: cell size in pixels; the cell is padded with dark gray.

    Returns:
        (height, width, 3) BGR uint8.
    """
    scale = min(height / image.shape[0], width / image.shape[1])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    cell = np.full((height, width, 3), 64, dtype=np.uint8)
    cell[: size[1], : size[0]] = cv2.resize(image, size, interpolation=interp)
    # Boxes and labels are drawn by Detectron2's Visualizer, Detectron2's own drawing (as its
    # tools/visualize_data.py does): the same look as the pseudo-label viewer
    # (ssdet/data/pseudo_labels/visualize.py).
    # Its line widths follow its default font size, which is at least 10 pt (for images of some
    # 900 px): thinner on cells under 320 px.
    visualizer = Visualizer(
        cell[:, :, ::-1], metadata=None, scale=1.0, font_size_scale=min(1.0, height / 320)
    )
    output = visualizer.get_output()
    points_per_pixel = 72 / output.dpi  # Visualizer's font sizes are in points
    font_size = max(_MIN_BOX_LABEL_SIZE, height * _BOX_LABEL_SIZE) * points_per_pixel
    font = FontProperties(family="sans-serif", size=font_size)
    renderer = output.canvas.get_renderer()
    # draw_text's label background: its text plus 0.7 pt on each side; a line is as tall as "lp".
    pad = 2 * 0.7 / points_per_pixel + 1
    _, label_height, _ = renderer.get_text_width_height_descent("lp", font, ismath=False)
    label_height += pad
    placed: list[tuple[float, float, float, float]] = []  # label rectangles drawn so far
    for (x0, y0, x1, y1), category in zip(boxes * scale, classes, strict=True):
        rgb = tuple(v / 255 for v in reversed(class_color(category)))
        # alpha 1: the edge is drawn in exactly the class's color.
        visualizer.draw_box((x0, y0, x1, y1), alpha=1.0, edge_color=rgb)
        label = class_names[category] if category < len(class_names) else str(category)
        label_width = renderer.get_text_width_height_descent(label, font, ismath=False)[0] + pad
        # Above the box where there is room, else inside its top edge.
        top = y0 - label_height if y0 - label_height >= 0 else max(y0, 0)
        left = min(max(x0, 0), max(width - label_width, 0))
        # Labels of boxes that share a corner would hide each other: stack them downwards.
        while any(
            left < r[2] and r[0] < left + label_width and top < r[3] and r[1] < top + label_height
            for r in placed
        ):
            top += label_height
        placed.append((left, top, left + label_width, top + label_height))
        visualizer.draw_text(
            label,
            (left + pad / 2, top + pad / 2),
            font_size=font_size,
            color=rgb,
            horizontal_alignment="left",
        )
    return np.ascontiguousarray(output.get_image()[:, :, ::-1])


def text_band(lines: list[list[Item]], scale: float, width: int, num_lines: int) -> np.ndarray:
    """A white band of ``num_lines`` text lines, ``lines`` (already wrapped) drawn on it."""
    pad = max(2, _line_height(scale) // 4)
    band = np.full((num_lines * _line_height(scale) + 2 * pad, width, 3), 255, dtype=np.uint8)
    draw_text(band, lines, (pad * 2, pad), scale)
    return band


def make_grid(
    rows: list[list[Cell]],
    titles: list[str],
    class_names: list[str],
    caption: str,
    height: int,
    width: int,
) -> np.ndarray:
    """The figure: a caption with a class-color legend, column titles, then per image row its
    cells over the ops each drew.

    Args:
        rows: cells per image, one per column.
        titles: column titles.
        class_names: the dataset's class names (the legend).
        caption: the figure's title line.
        height, width: cell size in pixels.
    """
    total = width * len(titles)
    margin = max(4, height // 40)
    ops_scale = font_scale(height, _OPS_SCALE)
    ops_lines = [[wrap(cell.ops, ops_scale, width - 4 * margin) for cell in row] for row in rows]
    ops_count = max(len(lines) for row in ops_lines for lines in row)

    title_scale = font_scale(height, _TITLE_SCALE)
    title_lines = [
        wrap([[(w, _TEXT) for w in t.split(" + ")]], title_scale, width - 2 * margin)
        for t in titles
    ]
    header = np.hstack(
        [
            text_band(lines, title_scale, width, max(len(x) for x in title_lines))
            for lines in title_lines
        ]
    )

    caption_scale = font_scale(height, _CAPTION_SCALE)
    phrases = [(w, _TEXT) for w in re.split(r"(?<=,) ", caption)]
    caption_block = wrap([phrases], caption_scale, total - 4 * margin)
    legend = [[(name, class_color(k)) for k, name in enumerate(class_names)]]
    legend = wrap([[("box colors:", _TEXT), *legend[0]]], ops_scale, total - 4 * margin)
    top = np.vstack(
        [
            text_band(caption_block, caption_scale, total, len(caption_block)),
            text_band(legend, ops_scale, total, len(legend)),
        ]
    )

    blocks = [top, header]
    for row, lines in zip(rows, ops_lines, strict=True):
        blocks.append(
            np.hstack(
                [render_cell(c.image, c.boxes, c.classes, class_names, height, width) for c in row]
            )
        )
        bands = [text_band(x, ops_scale, width, ops_count) for x in lines]
        for band in bands[1:]:
            band[:, :1] = 200  # a thin separator between columns
        blocks.append(np.hstack(bands))
    return np.vstack(blocks)


def main() -> None:
    with exit_on_input_error():
        draw(parse_args())


def draw(args: argparse.Namespace) -> None:
    """Draw and write the grid that ``args`` asks for."""
    cfg = load_cfg(args.config, args.opts, optional=True)
    dataset_dicts, class_names = load_dataset(args)
    image_format = cfg.INPUT.FORMAT
    mappers = {policy: build_mapper(cfg, policy) for policy in args.policies}

    cell = (args.cell_height, round(args.cell_height * 4 / 3))
    rows = []
    for index, dataset_dict in enumerate(dataset_dicts[: args.num_images]):
        row = [original_cell(dataset_dict)]
        for column, mapper in enumerate(mappers.values()):
            # One draw per cell: same seed, same grid; policies do not share their draws.
            np.random.seed(args.seed + index * len(mappers) + column)
            row.append(mapped_cell(mapper, dataset_dict, image_format))
        rows.append(row)
    if not rows:
        raise SystemExit("the dataset has no images")

    titles = ["original"] + [
        f"{policy}: {describe_policy(mapper.augmentations.augs)}"
        for policy, mapper in mappers.items()
    ]
    dataset = args.dataset or os.path.basename(args.coco_json)
    caption = (
        f"Augmentation policies {' '.join(args.policies)} on {dataset} (seed {args.seed}): "
        "rows are images, columns the image as loaded then each policy's train mapper, "
        "one color per class, under each cell the ops it drew (M: magnitude level 0-10)"
    )
    grid = make_grid(rows, titles, class_names, caption, *cell)
    ok, png = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    with atomic_open(args.output, "wb") as f:
        f.write(png.tobytes())
    print(f"wrote {args.output} ({len(rows)} images x {len(args.policies)} policies)")


if __name__ == "__main__":
    main()
