"""What the student's filter leaves of a pseudo-label store: statistics, JSON, a plot, a summary.

The report answers the questions asked before spending student compute: how many boxes per image,
which classes, what score distribution, and how many images are left without a box (the "no pseudo
boxes" failure; :meth:`PseudoLabelFilter.apply` also warns about it).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssdet.data.pseudo_labels import PseudoLabelSelection, is_almost_empty
from ssdet.utils.io import atomic_open, atomic_write_json

__all__ = ["PseudoLabelReport", "build_report", "write_report"]

# Boxes-per-image histogram: one bin per count up to this, then one "N+" bin.
_MAX_BOXES_BIN = 20
# Score histograms: equal bins over [0, 1], the range of RetinaNet's sigmoid scores.
_SCORE_BINS = 20


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
        if self.almost_empty:
            lines.append(
                f"  WARNING: almost no pseudo boxes; lower SSDET.PSEUDO_LABELS.SCORE_THRESH "
                f"(now {f['score_thresh']}) or check the teacher"
            )
        return "\n".join(lines)


def build_report(selection: PseudoLabelSelection) -> PseudoLabelReport:
    """Compute the report of a selection (vectorized; seconds at ImageNet scale).

    Args:
        selection: the output of :meth:`PseudoLabelFilter.apply`.
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
    )


def write_report(
    report: PseudoLabelReport, json_path: str | os.PathLike, png_path: str | os.PathLike | None
) -> None:
    """Write the report as JSON and, if ``png_path`` is given, as a 2x2 plot; both atomically.

    The plot uses matplotlib's Agg canvas directly, so it neither needs a display nor changes the
    caller's pyplot backend.

    Args:
        report: from :func:`build_report`.
        json_path: the JSON file.
        png_path: the PNG file, or None for no plot.
    """
    atomic_write_json(json_path, report.to_dict())
    if png_path is None:
        return
    fig = Figure(figsize=(12, 8), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(2, 2, 1)
    hist = report.boxes_per_image_histogram
    ax.bar(range(len(hist["counts"])), hist["counts"])
    ax.set_xticks(range(0, len(hist["bins"]), 5), hist["bins"][::5])
    ax.set_title(f"Kept boxes per image ({report.num_images_without_boxes} images without)")
    ax.set_xlabel("boxes")
    ax.set_ylabel("images")

    ax = fig.add_subplot(2, 2, 2)
    edges = np.asarray(report.score_histogram["bin_edges"])
    width = edges[1] - edges[0]
    ax.bar(edges[:-1], report.score_histogram["stored"], width=width, align="edge", label="stored")
    ax.bar(edges[:-1], report.score_histogram["kept"], width=width, align="edge", label="kept")
    ax.axvline(report.filter["score_thresh"], color="k", linestyle="--", label="SCORE_THRESH")
    ax.set_title("Teacher scores")
    ax.set_xlabel("score")
    ax.set_ylabel("boxes")
    ax.legend()

    for position, (title, counts) in enumerate(
        [
            ("Kept boxes per class", report.class_box_counts),
            ("Dataset images per class (top box)", report.class_image_counts),
        ],
        start=3,
    ):
        ax = fig.add_subplot(2, 2, position)
        ax.bar(range(len(counts)), list(counts.values()))
        if len(counts) <= 40:  # beyond that, names overlap into a black band
            ax.set_xticks(range(len(counts)), list(counts), rotation=90, fontsize=6)
        ax.set_title(title)
        ax.set_xlabel("class")
    with atomic_open(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
