"""What the student's filter leaves of a pseudo-label store: statistics, JSON, a plot, a summary.

The report answers the questions asked before spending student compute: how many boxes per image,
which classes, what score distribution, and how many images are left without a box (the "no pseudo
boxes" failure; :meth:`PseudoLabelFilter.apply` also warns about it). Where the images have ground
truth (the mini world's mini-ImageNet, see :mod:`ssdet.data.ground_truth`), it also says how many
kept boxes are right: precision and recall against the ground truth.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssdet.data.ground_truth import load_ground_truth
from ssdet.data.pseudo_labels.columns import gather_ranges, offsets_from_counts
from ssdet.data.pseudo_labels.filter import PseudoLabelSelection, is_almost_empty
from ssdet.utils.io import atomic_open, atomic_write_json

__all__ = [
    "FALSE_POSITIVE_KINDS",
    "GROUND_TRUTH_IOU",
    "LOCALIZATION_IOU",
    "PseudoLabelReport",
    "build_report",
    "report_figure",
    "write_report",
]

logger = logging.getLogger(__name__)

# Boxes-per-image histogram: one bin per count up to this, then one "N+" bin.
_MAX_BOXES_BIN = 20
# Score histograms: equal bins over [0, 1], the range of RetinaNet's sigmoid scores.
_SCORE_BINS = 20
# A kept box is a true positive at this IoU with a ground-truth object of its class (COCO's AP50).
GROUND_TRUTH_IOU = 0.5
# A false positive that overlaps an object at least this much, but none at GROUND_TRUTH_IOU, is a
# localization error; below it on every object, a box on background (the split of Hoiem et al.'s
# "Diagnosing error in object detectors", with its 0.1).
LOCALIZATION_IOU = 0.1
# The kinds of false positive, in the order a box is assigned to the first that applies.
FALSE_POSITIVE_KINDS = ("duplicate", "wrong_class", "novel_class", "localization", "background")
# The plot (write_report): pixels per inch, font sizes (points), and the per-class bar charts'
# width: one rotated class name per _CLASS_LABEL_WIDTH inches, at most _MAX_CLASS_LABELS names.
_DPI = 100
_TICK_FONT_SIZE = 10
_TITLE_FONT_SIZE = 12
_CLASS_LABEL_WIDTH = 0.2
_MAX_CLASS_LABELS = 150
_MIN_WIDTH = 12.0
_MAX_WIDTH = 32.0


@dataclass
class PseudoLabelReport:
    """Statistics of a filtered pseudo-label store.

    Per-image numbers are over the store's images after the box filter and before class balancing;
    ``dataset_size`` and ``class_image_counts`` are after balancing (what the student samples).

    Attributes:
        store_path: the store directory.
        filter: the filter's settings.
        num_images: images in the store.
        num_failed_images: images the teacher could not label.
        num_stored_boxes: boxes in the store (above the labeling score floor).
        num_kept_boxes: boxes the filter kept.
        num_images_with_boxes: images with at least one kept box.
        num_images_without_boxes: images left without a box.
        fraction_without_boxes: ``num_images_without_boxes / num_images`` (1.0 for an empty store).
        almost_empty: see :func:`is_almost_empty` (also warned about by the filter).
        dataset_size: items in the student's dataset, balancing duplicates included.
        boxes_per_image: ``{"mean", "median", "max"}`` of kept boxes per image.
        boxes_per_image_histogram: ``{"bins": ["0", "1", ..., "20+"], "counts": [...]}``.
        class_box_counts: class name -> kept boxes.
        class_image_counts: class name -> dataset items whose top kept box has that class.
        score_histogram: ``{"bin_edges", "stored", "kept"}``: counts of stored and kept boxes.
        ground_truth: None without ground truth, else the kept boxes measured on the store's
            images that the ground truth lists: ``{"file", "iou_threshold", "num_images",
            "num_kept_boxes", "num_gt_boxes" (objects of the teacher's classes),
            "num_novel_gt_boxes" (objects of other classes: no pseudo box can match them),
            "true_positives", "precision", "recall", "image_accuracy" (fraction of the images
            whose top-scoring kept box is a true positive; an image without one counts as
            wrong), "per_class": {name: {"kept", "gt", "true_positives", "precision",
            "recall"}}, "false_positives": {kind: count}}``. A precision or recall of nothing
            (0 / 0) is None. Each kept box that is not a true positive counts once, as the first
            of :data:`FALSE_POSITIVE_KINDS` that applies: "duplicate" (IoU >= 0.5 with an object
            of its class that a higher-scoring box took), "wrong_class" (with an object of
            another of the teacher's classes), "novel_class" (with an object of a class the
            teacher does not know), "localization" (IoU >= 0.1 with some object), "background";
            "wrong_class_on_found_object" counts the wrong-class boxes on an object that a kept
            box of its own class found (what class-agnostic NMS would remove).
    """

    store_path: str
    filter: dict[str, Any]
    num_images: int
    num_failed_images: int
    num_stored_boxes: int
    num_kept_boxes: int
    num_images_with_boxes: int
    num_images_without_boxes: int
    fraction_without_boxes: float
    almost_empty: bool
    dataset_size: int
    boxes_per_image: dict[str, float]
    boxes_per_image_histogram: dict[str, list]
    class_box_counts: dict[str, int]
    class_image_counts: dict[str, int]
    score_histogram: dict[str, list]
    ground_truth: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few printable lines."""
        f = self.filter
        busiest = sorted(self.class_box_counts.items(), key=lambda kv: -kv[1])[:5]
        lines = [
            f"Pseudo labels {self.store_path}",
            f"  filter: score >= {f['score_thresh']}"
            + (f", per class {f['class_score_threshs']}" if f["class_score_threshs"] else "")
            + (f", <= {f['max_boxes_per_image']} boxes/image" if f["max_boxes_per_image"] else "")
            + (f", shorter side >= {f['min_box_size']} px" if f["min_box_size"] else "")
            + (", class-balanced" if f["balance_classes"] else ""),
            f"  images: {self.num_images} ({self.num_failed_images} failed at labeling), "
            f"{self.num_images_with_boxes} with boxes, {self.num_images_without_boxes} without "
            f"({100 * self.fraction_without_boxes:.1f}%); dataset size {self.dataset_size}",
            f"  boxes: kept {self.num_kept_boxes} of {self.num_stored_boxes}; per image mean "
            f"{self.boxes_per_image['mean']:.2f}, median {self.boxes_per_image['median']:g}, max "
            f"{self.boxes_per_image['max']:g}",
            "  most boxes: " + ", ".join(f"{name} {count}" for name, count in busiest),
        ]
        gt = self.ground_truth
        if gt is not None:
            lines.append(
                f"  ground truth: precision {_percent(gt['precision'])}, recall "
                f"{_percent(gt['recall'])}, image accuracy {_percent(gt['image_accuracy'])} at IoU "
                f"{gt['iou_threshold']:g} on {gt['num_images']} images; objects of classes the "
                f"teacher does not know, not counted: {gt['num_novel_gt_boxes']}"
            )
            fp, kept = gt["false_positives"], gt["num_kept_boxes"]
            lines.append(
                "  false positives, % of kept boxes: "
                + ", ".join(
                    f"{kind.replace('_', ' ')} {_percent(_ratio(fp[kind], kept))}"
                    + (
                        f" ({_percent(_ratio(fp['wrong_class_on_found_object'], kept))} on "
                        "objects found in their class)"
                        if kind == "wrong_class"
                        else ""
                    )
                    for kind in FALSE_POSITIVE_KINDS
                )
            )
        if self.almost_empty:
            lines.append(
                f"  WARNING: almost no pseudo boxes; lower SSDET.PSEUDO_LABELS.SCORE_THRESH "
                f"(now {f['score_thresh']}) or check the teacher"
            )
        return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _true_positives(
    classes: np.ndarray,
    gt_classes: np.ndarray,
    pair_boxes: np.ndarray,
    pair_gt: np.ndarray,
    iou: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of kept boxes to ground-truth objects, all images at once.

    In descending score order, each box takes the unmatched object of its class that it overlaps
    most, if their IoU is at least :data:`GROUND_TRUTH_IOU`. Only the few pairs above the IoU can
    match, so the greedy loop runs over them alone.

    Args:
        classes: int (D,) classes of the kept boxes, grouped by image and score-descending within
            one.
        gt_classes: int (G,) the objects' classes in the teacher's ids, -1 for classes it does not
            know.
        pair_boxes, pair_gt: int (P,) every (box, object) pair of the same image.
        iou: float (P,) the IoU of each pair.

    Returns:
        bool (D,) whether each kept box is a true positive, and bool (G,) whether each object
        was matched.
    """
    # Kept classes are >= 0, so an object of a novel class (-1) is never a candidate.
    candidate = (classes[pair_boxes] == gt_classes[pair_gt]) & (iou >= GROUND_TRUTH_IOU)
    pair_boxes, pair_gt, iou = pair_boxes[candidate], pair_gt[candidate], iou[candidate]
    # Box by box (indices run in score order within an image), each box's candidates by
    # descending IoU: the first object still unmatched is the one the box takes.
    order = np.lexsort((pair_gt, -iou, pair_boxes))
    hits = np.zeros(len(classes), dtype=bool)
    matched = np.zeros(len(gt_classes), dtype=bool)
    for d, g in zip(pair_boxes[order].tolist(), pair_gt[order].tolist(), strict=True):
        if not hits[d] and not matched[g]:
            hits[d] = matched[g] = True
    return hits, matched


def _false_positives(
    hits: np.ndarray,
    matched: np.ndarray,
    classes: np.ndarray,
    gt_classes: np.ndarray,
    pair_boxes: np.ndarray,
    pair_gt: np.ndarray,
    iou: np.ndarray,
) -> dict[str, int]:
    """Counts of the kinds of false positive (see :class:`PseudoLabelReport`), all boxes at once.

    Arguments as :func:`_true_positives`, with its ``hits`` and ``matched``.
    """

    def boxes_with(pairs: np.ndarray) -> np.ndarray:
        return np.bincount(pair_boxes[pairs], minlength=len(hits)) > 0

    same = classes[pair_boxes] == gt_classes[pair_gt]
    known = gt_classes[pair_gt] >= 0
    overlap = iou >= GROUND_TRUTH_IOU
    left = ~hits
    counts = {}
    for kind, pairs in (
        ("duplicate", same & overlap),
        ("wrong_class", ~same & known & overlap),
        ("novel_class", ~known & overlap),
        ("localization", iou >= LOCALIZATION_IOU),
    ):
        kind_boxes = left & boxes_with(pairs)
        counts[kind] = int(kind_boxes.sum())
        left &= ~kind_boxes
        if kind == "wrong_class":
            on_found = kind_boxes & boxes_with(pairs & matched[pair_gt])
            counts["wrong_class_on_found_object"] = int(on_found.sum())
    counts["background"] = int(left.sum())
    return counts


def _ground_truth_section(
    selection: PseudoLabelSelection, json_file: str | os.PathLike
) -> dict[str, Any]:
    """The ``ground_truth`` field of the report (see :class:`PseudoLabelReport`)."""
    store = selection.store
    names = store.class_names
    class_ids = {name: k for k, name in enumerate(names)}
    truth = load_ground_truth(json_file)
    entries = [truth.get(store.stored_file_name(i)) for i in range(store.num_images)]
    images = np.array([i for i, e in enumerate(entries) if e is not None], dtype=np.int64)
    objects = [entries[i] for i in images.tolist()]
    if not len(images):
        logger.warning(
            "Ground truth %s lists none of the %d images of %s: are they the same images?",
            json_file,
            store.num_images,
            store.path,
        )
    # The objects of the store's images with ground truth, flat: those of images[p] are rows
    # gt_offsets[p]:gt_offsets[p + 1].
    gt_counts = np.array([len(o.class_names) for o in objects], dtype=np.int64)
    gt_offsets = offsets_from_counts(gt_counts)
    gt_boxes = np.concatenate([o.boxes for o in objects] or [np.zeros((0, 4))])
    gt_classes = np.array(
        [class_ids.get(n, -1) for o in objects for n in o.class_names], dtype=np.int64
    )
    # The kept boxes of those images, and every (box, object) pair within an image.
    box_counts = selection.kept_boxes_per_image()[images]
    rows = selection.box_rows[gather_ranges(selection.box_offsets[images], box_counts)]
    box_image = np.repeat(np.arange(len(images)), box_counts)
    pair_boxes = np.repeat(np.arange(len(rows)), gt_counts[box_image])
    pair_gt = gather_ranges(gt_offsets[box_image], gt_counts[box_image])
    classes = store.classes[rows].astype(np.int64)
    iou = matched_pairwise_iou(
        Boxes(torch.from_numpy(store.boxes[rows][pair_boxes])),
        Boxes(torch.from_numpy(gt_boxes[pair_gt])),
    ).numpy()
    hits, matched = _true_positives(classes, gt_classes, pair_boxes, pair_gt, iou)

    kept = np.bincount(classes, minlength=len(names))
    tp = np.bincount(classes[hits], minlength=len(names))
    gt = np.bincount(gt_classes[gt_classes >= 0], minlength=len(names))
    # An image's first kept box is its top-scoring one (score-descending rows).
    first_boxes = (np.cumsum(box_counts) - box_counts)[box_counts > 0]
    num_correct = int(hits[first_boxes].sum())
    return {
        "file": os.fspath(json_file),
        "iou_threshold": GROUND_TRUTH_IOU,
        "num_images": len(images),
        "num_kept_boxes": int(kept.sum()),
        "num_gt_boxes": int(gt.sum()),
        "num_novel_gt_boxes": int((gt_classes < 0).sum()),
        "true_positives": int(tp.sum()),
        "precision": _ratio(int(tp.sum()), int(kept.sum())),
        "recall": _ratio(int(tp.sum()), int(gt.sum())),
        "image_accuracy": _ratio(num_correct, len(images)),
        "per_class": {
            name: {
                "kept": k,
                "gt": g,
                "true_positives": t,
                "precision": _ratio(t, k),
                "recall": _ratio(t, g),
            }
            for name, k, g, t in zip(names, kept.tolist(), gt.tolist(), tp.tolist(), strict=True)
        },
        "false_positives": _false_positives(
            hits, matched, classes, gt_classes, pair_boxes, pair_gt, iou
        ),
    }


def build_report(
    selection: PseudoLabelSelection, ground_truth: str | os.PathLike | None = None
) -> PseudoLabelReport:
    """Compute the report of a selection (vectorized; seconds at ImageNet scale).

    Args:
        selection: the output of :meth:`PseudoLabelFilter.apply`.
        ground_truth: a COCO instances file of the store's images (file names relative to the
            store's ``image_root``), e.g. from :func:`~ssdet.data.ground_truth.find_ground_truth`;
            None for no precision and recall.

    Raises:
        InputError: ``ground_truth`` is missing or not a COCO instances file.
    """
    store = selection.store
    names = store.class_names
    per_image = selection.kept_boxes_per_image()
    n = store.num_images
    with_boxes = int(np.count_nonzero(per_image))
    clipped = np.minimum(per_image, _MAX_BOXES_BIN)
    box_histogram = np.bincount(clipped, minlength=_MAX_BOXES_BIN + 1)
    kept_classes = np.bincount(store.classes[selection.box_rows], minlength=len(names))
    item_classes = selection.image_classes[selection.image_index]
    image_classes = np.bincount(item_classes[item_classes >= 0], minlength=len(names))
    edges = np.linspace(0.0, 1.0, _SCORE_BINS + 1)
    stored_scores, _ = np.histogram(store.scores, bins=edges)
    kept_scores, _ = np.histogram(store.scores[selection.box_rows], bins=edges)
    return PseudoLabelReport(
        store_path=store.path,
        filter=selection.pseudo_filter.to_dict(),
        num_images=n,
        num_failed_images=int(store.metadata["counts"]["failed_images"]),
        num_stored_boxes=store.num_boxes,
        num_kept_boxes=selection.num_kept_boxes,
        num_images_with_boxes=with_boxes,
        num_images_without_boxes=n - with_boxes,
        fraction_without_boxes=(n - with_boxes) / n if n else 1.0,
        almost_empty=is_almost_empty(selection),
        dataset_size=len(selection.image_index),
        boxes_per_image={
            "mean": float(per_image.mean()) if n else 0.0,
            "median": float(np.median(per_image)) if n else 0.0,
            "max": float(per_image.max()) if n else 0.0,
        },
        boxes_per_image_histogram={
            "bins": [str(k) for k in range(_MAX_BOXES_BIN)] + [f"{_MAX_BOXES_BIN}+"],
            "counts": box_histogram.tolist(),
        },
        class_box_counts=dict(zip(names, kept_classes.tolist(), strict=True)),
        class_image_counts=dict(zip(names, image_classes.tolist(), strict=True)),
        score_histogram={
            "bin_edges": edges.tolist(),
            "stored": stored_scores.tolist(),
            "kept": kept_scores.tolist(),
        },
        ground_truth=None
        if ground_truth is None
        else _ground_truth_section(selection, ground_truth),
    )


def write_report(
    report: PseudoLabelReport, json_path: str | os.PathLike, png_path: str | os.PathLike | None
) -> None:
    """Write the report as JSON and, if ``png_path`` is given, as a plot (:func:`report_figure`);
    both atomically.

    Args:
        report: from :func:`build_report`.
        json_path: the JSON file.
        png_path: the PNG file, or None for no plot.
    """
    atomic_write_json(json_path, report.to_dict())
    if png_path is None:
        return
    fig = report_figure(report)
    with atomic_open(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=_DPI)


def report_figure(report: PseudoLabelReport) -> Figure:
    """The report's plot: the two histograms side by side, then one full-width bar chart per
    class count, as wide as the class names need (at most :data:`_MAX_CLASS_LABELS` labeled).

    Uses matplotlib's Agg canvas directly, so it neither needs a display nor changes the caller's
    pyplot backend.
    """
    num_classes = len(report.class_box_counts)
    labeled = min(num_classes, _MAX_CLASS_LABELS)
    # Rotated names stand side by side: give each its line height, plus room for the axes.
    width = min(_MAX_WIDTH, max(_MIN_WIDTH, 1.5 + labeled * _CLASS_LABEL_WIDTH))
    longest = max((len(name) for name in report.class_box_counts), default=1)
    names_height = min(3.0, 0.09 * longest)  # inches taken by the rotated names under a chart
    fig = Figure(figsize=(width, 9 + 2 * names_height), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 2, height_ratios=[3, 3 + names_height, 3 + names_height])

    ax = fig.add_subplot(grid[0, 0])
    hist = report.boxes_per_image_histogram
    ax.bar(range(len(hist["counts"])), hist["counts"])
    ax.set_xticks(range(0, len(hist["bins"]), 5), hist["bins"][::5])
    ax.set_title(f"Kept boxes per image ({report.num_images_without_boxes} images without)")
    gt = report.ground_truth
    title = f"Pseudo labels: {report.num_kept_boxes} kept boxes on {report.num_images} images"
    if gt is not None:
        title += (
            f"; against ground truth: precision {_percent(gt['precision'])}, recall "
            f"{_percent(gt['recall'])} at IoU {gt['iou_threshold']:g}"
        )
    fig.suptitle(title, fontsize=_TITLE_FONT_SIZE + 1)
    ax.set_xlabel("boxes")
    ax.set_ylabel("images")

    ax = fig.add_subplot(grid[0, 1])
    edges = np.asarray(report.score_histogram["bin_edges"])
    bin_width = edges[1] - edges[0]
    ax.bar(
        edges[:-1], report.score_histogram["stored"], width=bin_width, align="edge", label="stored"
    )
    ax.bar(edges[:-1], report.score_histogram["kept"], width=bin_width, align="edge", label="kept")
    ax.axvline(report.filter["score_thresh"], color="k", linestyle="--", label="SCORE_THRESH")
    ax.set_title("Teacher scores")
    ax.set_xlabel("score")
    ax.set_ylabel("boxes")
    ax.legend(fontsize=_TICK_FONT_SIZE)

    for row, (title, counts, unit) in enumerate(
        [
            ("Kept boxes per class", report.class_box_counts, "boxes"),
            ("Dataset images per class (top box)", report.class_image_counts, "images"),
        ],
        start=1,
    ):
        ax = fig.add_subplot(grid[row, :])
        ax.bar(range(len(counts)), list(counts.values()))
        ax.set_xlim(-0.5, len(counts) - 0.5)
        # Every class named up to _MAX_CLASS_LABELS; beyond, every step-th, so names never overlap.
        step = -(-len(counts) // _MAX_CLASS_LABELS) if counts else 1
        names = list(counts)
        ax.set_xticks(
            range(0, len(counts), step),
            names[::step],
            rotation=90,
            fontsize=_TICK_FONT_SIZE,
        )
        ax.set_title(title + (f" (one class in {step} named)" if step > 1 else ""))
        ax.set_xlabel("class")
        ax.set_ylabel(unit)
    for ax in fig.axes:
        ax.tick_params(labelsize=_TICK_FONT_SIZE)
        ax.title.set_fontsize(_TITLE_FONT_SIZE)
        ax.xaxis.label.set_fontsize(_TICK_FONT_SIZE + 1)
        ax.yaxis.label.set_fontsize(_TICK_FONT_SIZE + 1)
    return fig
