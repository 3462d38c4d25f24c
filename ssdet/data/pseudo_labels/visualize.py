"""One image's pseudo labels drawn: the boxes the student's filter keeps and drops, and the truth.

``tools/visualize_pseudo_labels.py`` calls :func:`visualize_pseudo_labels`. Every box the teacher
stored for the image is drawn with its class and score: kept by the filter (solid green, what the
student trains on), dropped (dashed red), or an ignore region (dotted orange, with
``IGNORE_SCORE_THRESH``); the image's ground truth, where a registered dataset has it
(:func:`~ssdet.data.ground_truth.find_ground_truth`), in solid blue with its class names. A header
says how many of each there are and how often the image is in the student's dataset (0 when the
filter leaves it out, more than 1 for class-balancing duplicates). Drawn with Detectron2's
``Visualizer``, as Detectron2's ``tools/visualize_data.py`` does.

Not imported by ``ssdet.data.pseudo_labels`` (it needs matplotlib and cv2).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from detectron2.data import detection_utils
from detectron2.utils.visualizer import Visualizer

from ssdet.data.ground_truth import GroundTruthBoxes, find_ground_truth, load_ground_truth
from ssdet.data.pseudo_labels.filter import PseudoLabelFilter, PseudoLabelSelection
from ssdet.data.pseudo_labels.store import PseudoLabelStore
from ssdet.utils.errors import InputError
from ssdet.utils.io import atomic_open

__all__ = [
    "DROPPED",
    "IGNORED",
    "KEPT",
    "ImagePseudoLabels",
    "draw_pseudo_labels",
    "find_image",
    "image_pseudo_labels",
    "visualize_pseudo_labels",
]

# What the student's filter does with a stored box.
KEPT = "kept"
DROPPED = "dropped"
IGNORED = "ignore"

# (edge color, line style) of each kind of box, and of the ground truth.
_STYLES = {KEPT: ("lime", "-"), DROPPED: ("red", "--"), IGNORED: ("orange", ":")}
_GROUND_TRUTH_STYLE = ("deepskyblue", "-")
# Header lines above the image, in pixels each.
_HEADER_LINE = 18


@dataclass
class ImagePseudoLabels:
    """Everything drawn for one image of a store.

    Attributes:
        index: the image's row in the store.
        image_id: its id.
        file_name: its path (joined to the store's ``image_root``).
        boxes: float32 (K, 4) every stored box, XYXY in original-image pixels, score-descending.
        scores: float32 (K,) their teacher scores.
        classes: int (K,) their contiguous class ids.
        status: (K,) :data:`KEPT`, :data:`DROPPED` or :data:`IGNORED` for each box.
        times_in_dataset: how often the image is in the student's dataset: 0 when the filter
            leaves it out (no kept box), more than 1 for class-balancing duplicates.
        ground_truth: its annotated objects, or None when there is no ground truth for it.
    """

    index: int
    image_id: int
    file_name: str
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    status: np.ndarray
    times_in_dataset: int
    ground_truth: GroundTruthBoxes | None = None

    def count(self, status: str) -> int:
        return int(np.count_nonzero(self.status == status))


def find_image(store: PseudoLabelStore, key: str) -> int:
    """The store row of an image named by its id or its file name.

    Args:
        store: the store.
        key: an image id (digits), or a file name as stored (relative to ``image_root``), as a
            path (absolute or from the current directory), or a base name that one image has.

    Raises:
        InputError: no image, or several, match; the message names close file names.
    """
    if key.lstrip("-").isdigit():
        rows = np.flatnonzero(np.asarray(store.image_ids) == int(key))
        if len(rows):
            return int(rows[0])
    names = [store.stored_file_name(i) for i in range(store.num_images)]
    rows = {name: i for i, name in reversed(list(enumerate(names)))}
    # As stored, or as a path: absolute names as they are, relative ones from the image root.
    path = os.path.abspath(key)
    candidates = [key, path]
    if store.image_root:
        candidates.append(os.path.relpath(path, os.path.abspath(store.image_root)))
    for candidate in candidates:
        if candidate in rows:
            return rows[candidate]
    base = os.path.basename(key)
    same_base = [i for i, name in enumerate(names) if os.path.basename(name) == base]
    if len(same_base) == 1:
        return same_base[0]
    if same_base:
        raise InputError(
            f"{len(same_base)} images of {store.path} are named {base!r}: give the file name as "
            f"stored, e.g. {names[same_base[0]]!r}, or an image id."
        )
    # difflib compares with every name: only for stores of a moderate size.
    close = difflib.get_close_matches(key, names, n=3) if len(names) <= 20000 else []
    hint = f"; close file names: {', '.join(close)}" if close else ""
    example = f" (e.g. {names[0]!r}, id {int(store.image_ids[0])})" if names else ""
    raise InputError(
        f"No image {key!r} in the pseudo-label store {store.path} ({store.num_images} images): "
        f"give an image id or a file name as stored{example}{hint}."
    )


def image_pseudo_labels(
    selection: PseudoLabelSelection,
    index: int,
    ground_truth: Mapping[str, GroundTruthBoxes] | None = None,
) -> ImagePseudoLabels:
    """Sort one image's stored boxes into kept, dropped and ignore regions.

    Args:
        selection: the student's filter applied to the store (:meth:`PseudoLabelFilter.apply`).
        index: the image's row in the store.
        ground_truth: file name as stored -> objects (:func:`load_ground_truth`), or None.
    """
    store = selection.store
    start, end = (int(v) for v in store.image_offsets[index : index + 2])
    rows = np.arange(start, end)
    status = np.full(len(rows), DROPPED, dtype=object)
    kept = selection.box_rows[selection.box_offsets[index] : selection.box_offsets[index + 1]]
    status[np.isin(rows, kept)] = KEPT
    if selection.ignore_rows is not None:
        ignore_range = selection.ignore_offsets[index : index + 2]
        status[np.isin(rows, selection.ignore_rows[ignore_range[0] : ignore_range[1]])] = IGNORED
    # image_index is ascending: an image's duplicates are one run.
    image_index = selection.image_index
    times = int(
        np.searchsorted(image_index, index, side="right")
        - np.searchsorted(image_index, index, side="left")
    )
    truth = None
    if ground_truth is not None:
        truth = ground_truth.get(store.stored_file_name(index))
    return ImagePseudoLabels(
        index=index,
        image_id=int(store.image_ids[index]),
        file_name=store.file_name(index),
        boxes=np.asarray(store.boxes[start:end], dtype=np.float32),
        scores=np.asarray(store.scores[start:end], dtype=np.float32),
        classes=np.asarray(store.classes[start:end]).astype(np.int64),
        status=status,
        times_in_dataset=times,
        ground_truth=truth,
    )


def _summary(labels: ImagePseudoLabels, pseudo_filter: PseudoLabelFilter) -> list[str]:
    counts = [
        f"{labels.count(KEPT)} kept (score >= {pseudo_filter.score_thresh:g}"
        + (", per-class thresholds" if pseudo_filter.class_score_threshs else "")
        + ")",
        f"{labels.count(DROPPED)} dropped",
    ]
    if pseudo_filter.ignore_score_thresh > 0:
        counts.append(f"{labels.count(IGNORED)} ignore")
    if labels.ground_truth is not None:
        counts.append(f"{len(labels.ground_truth.class_names)} ground truth")
    else:
        counts.append("no ground truth")
    return [
        f"{os.path.basename(labels.file_name)} (id {labels.image_id}): in the student's dataset "
        f"{labels.times_in_dataset}x",
        ", ".join(counts),
    ]


def draw_pseudo_labels(
    image: np.ndarray,
    labels: ImagePseudoLabels,
    class_names: Sequence[str],
    pseudo_filter: PseudoLabelFilter,
    size: int = 640,
) -> np.ndarray:
    """Draw an image's pseudo labels and ground truth with Detectron2's ``Visualizer``.

    The image is first resized so that its longer side is ``size`` pixels (nearest neighbour
    when enlarged), so that Detectron2's line widths and font sizes, sized for such images, stay
    readable on small ones; a header of two lines is added above it.

    Args:
        image: (H, W, 3) uint8 RGB, the image the boxes' pixel coordinates refer to.
        labels: from :func:`image_pseudo_labels`.
        class_names: the store's class names, by contiguous id.
        pseudo_filter: the filter the labels were sorted by (for the header).
        size: longer side of the drawn image, pixels.

    Returns:
        (size' + header, size'', 3) uint8 RGB.
    """
    height, width = image.shape[:2]
    factor = size / max(height, width)
    resized = cv2.resize(
        image,
        (max(1, round(width * factor)), max(1, round(height * factor))),
        interpolation=cv2.INTER_NEAREST if factor > 1 else cv2.INTER_AREA,
    )
    header = 2 * _HEADER_LINE + 4
    canvas = np.concatenate([np.full((header, resized.shape[1], 3), 32, np.uint8), resized])
    visualizer = Visualizer(canvas, metadata=None, scale=1.0)
    offset = np.array([0, header, 0, header], dtype=np.float32)

    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else str(c)

    if labels.ground_truth is not None:
        color, line = _GROUND_TRUTH_STYLE
        for box, class_name in zip(
            labels.ground_truth.boxes, labels.ground_truth.class_names, strict=True
        ):
            x0, y0, x1, y1 = np.asarray(box, dtype=np.float32) * factor + offset
            visualizer.draw_box((x0, y0, x1, y1), alpha=0.9, edge_color=color, line_style=line)
            visualizer.draw_text(
                f"gt {class_name}", (x0, y1), color=color, horizontal_alignment="left"
            )
    # Dropped boxes under the kept ones; the kept ones are what the student sees.
    for status in (DROPPED, IGNORED, KEPT):
        color, line = _STYLES[status]
        for k in np.flatnonzero(labels.status == status).tolist():
            x0, y0, x1, y1 = labels.boxes[k] * factor + offset
            visualizer.draw_box((x0, y0, x1, y1), alpha=0.9, edge_color=color, line_style=line)
            text = f"{name(int(labels.classes[k]))} {labels.scores[k]:.2f}"
            if status == IGNORED:
                text = f"ignore {text}"
            visualizer.draw_text(text, (x0, y0), color=color, horizontal_alignment="left")
    for line_number, text in enumerate(_summary(labels, pseudo_filter)):
        visualizer.draw_text(
            text, (4, 2 + line_number * _HEADER_LINE), color="white", horizontal_alignment="left"
        )
    return visualizer.get_output().get_image()


def visualize_pseudo_labels(
    store_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    pseudo_filter: PseudoLabelFilter,
    images: Sequence[str] = (),
    num_images: int = 0,
    ground_truth: str | os.PathLike | None = None,
    size: int = 640,
) -> list[str]:
    """Draw images of a store, one PNG each, named ``<image id>.png``.

    Args:
        store_dir: the pseudo-label store.
        output_dir: folder for the PNGs (created).
        pseudo_filter: the student's filter, e.g. ``PseudoLabelFilter.from_config(cfg)``.
        images: image ids or file names (see :func:`find_image`).
        num_images: also draw the store's first this many images.
        ground_truth: a COCO instances file of the store's images; None = the one a registered
            dataset records for the store's image folder, if any.
        size: longer side of the drawn images, pixels.

    Returns:
        The written files: those of ``images`` in their order, then the first images'.

    Raises:
        InputError: no store at ``store_dir``, an unknown image, an unreadable image file or
            ground truth.
    """
    store_dir = os.fspath(store_dir)
    if not os.path.isdir(store_dir):
        raise InputError(
            f"Pseudo-label store {store_dir!r} not found: give the directory that "
            "tools/pseudo_label.py wrote (its --output, then store/), or SSDET.PSEUDO_LABELS.STORE."
        )
    store = PseudoLabelStore.open(store_dir)
    rows = [find_image(store, key) for key in images]
    rows += range(min(num_images, store.num_images))
    selection = pseudo_filter.apply(store)
    json_file = ground_truth if ground_truth is not None else find_ground_truth(store)
    truth = load_ground_truth(json_file) if json_file is not None else None
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for row in rows:
        labels = image_pseudo_labels(selection, row, truth)
        try:
            image = detection_utils.read_image(labels.file_name, format="RGB")
        except OSError as e:
            raise InputError(f"Cannot read image {labels.file_name!r} of {store.path}: {e}") from e
        drawn = draw_pseudo_labels(image, labels, store.class_names, pseudo_filter, size)
        ok, png = cv2.imencode(".png", np.ascontiguousarray(drawn[:, :, ::-1]))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        path = os.path.join(os.fspath(output_dir), f"{labels.image_id}.png")
        with atomic_open(path, "wb") as f:
            f.write(png.tobytes())
        written.append(path)
    return written
