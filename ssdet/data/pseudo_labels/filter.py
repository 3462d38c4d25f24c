"""The student's filter: which stored pseudo boxes and images the student trains on.

:class:`PseudoLabelFilter` picks boxes (score thresholds, per-class overrides, top-k, size) and
images (class balancing, empty images, ignore regions) from a
:class:`~ssdet.data.pseudo_labels.store.PseudoLabelStore` as index arrays, a
:class:`PseudoLabelSelection`, so a threshold sweep needs no second teacher pass.
:func:`is_almost_empty` and :func:`warn_if_almost_empty` catch the "no pseudo boxes" failure;
:func:`check_pseudo_labels` refuses a store of which the student's filter keeps no box.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from detectron2.config import CfgNode

from ssdet.data.pseudo_labels.columns import offsets_from_counts
from ssdet.data.pseudo_labels.store import PseudoLabelStore
from ssdet.utils.errors import InputError

__all__ = [
    "ALMOST_EMPTY_FRACTION",
    "BALANCE_SUBSAMPLE_RULES",
    "PseudoLabelFilter",
    "PseudoLabelSelection",
    "check_pseudo_labels",
    "is_almost_empty",
    "warn_if_almost_empty",
]

logger = logging.getLogger(__name__)

# Below this fraction of images with at least one kept box, the filter warns (see
# warn_if_almost_empty): the "no pseudo boxes" failure that otherwise shows only as a student
# that does not improve.
ALMOST_EMPTY_FRACTION = 0.01

BALANCE_SUBSAMPLE_RULES = ("top_score", "random")


def _row_dtype(num_rows: int) -> type:
    # Kept-box row indices are the filter's largest array; int32 halves it below 2**31 boxes.
    return np.int32 if num_rows <= np.iinfo(np.int32).max else np.int64


@dataclass
class PseudoLabelSelection:
    """The filter's result: index arrays into a store, no per-image Python objects.

    Attributes:
        store: the base store.
        image_index: int64 (K,) the base image of each dataset item, ascending; repeated indices are
            class-balancing duplicates.
        box_offsets: int64 (N+1,) kept boxes of base image i are
            ``box_rows[box_offsets[i]:box_offsets[i+1]]``.
        box_rows: int32 or int64 (B,) rows into ``store.boxes/scores/classes``, grouped by image and
            score-descending within one.
        image_classes: int32 (N,) class of each base image's highest-scoring kept box; -1 if none.
        pseudo_filter: the filter that produced this selection.
        ignore_offsets, ignore_rows: the ignore regions of each base image, laid out as
            ``box_offsets`` / ``box_rows``; None when the filter has no ``ignore_score_thresh``.
    """

    store: PseudoLabelStore
    image_index: np.ndarray
    box_offsets: np.ndarray
    box_rows: np.ndarray
    image_classes: np.ndarray
    pseudo_filter: PseudoLabelFilter
    ignore_offsets: np.ndarray | None = None
    ignore_rows: np.ndarray | None = None

    @property
    def num_kept_boxes(self) -> int:
        return len(self.box_rows)

    def kept_boxes_per_image(self) -> np.ndarray:
        """int64 (N,) number of kept boxes of each base image (before balancing)."""
        return np.diff(self.box_offsets)


@dataclass(frozen=True)
class PseudoLabelFilter:
    """Which pseudo boxes and images the student trains on; applied when the store is loaded.

    Args:
        score_thresh: keep boxes with score >= this (the paper keeps >= 0.5).
        class_score_threshs: class (contiguous id or name) -> threshold overriding ``score_thresh``.
        max_boxes_per_image: keep at most this many top-scoring boxes per image; 0 = no limit.
        min_box_size: drop boxes whose shorter side is below this, in pixels; 0 = keep all.
        keep_empty_images: keep images left without boxes (as background-only images); they do
            not take part in class balancing and appear once each.
        balance_classes: Noisy Student's balancing. An image's class is that of its highest-scoring
            kept box; each class is brought to ``images_per_class`` images by duplicating (all
            images repeated, then a seeded draw for the remainder) or subsampling.
        images_per_class: per-class target; 0 = the mean count over classes that have images.
        balance_subsample: how classes with too many images are cut: "top_score" keeps the images
            with the highest top-box score (Noisy Student's rule), "random" a seeded draw.
        balance_seed: seed of the balancing draws; class c uses ``default_rng((seed, c))``, so
            one class's draw does not depend on the others.
        ignore_score_thresh: stored boxes that are not kept but score >= this become ignore
            regions (dataset annotations with ``category_id`` -1); 0 = none. Below every keep
            threshold.
    """

    score_thresh: float = 0.5
    class_score_threshs: Mapping[int | str, float] = field(default_factory=dict)
    max_boxes_per_image: int = 0
    min_box_size: float = 0.0
    keep_empty_images: bool = False
    balance_classes: bool = False
    images_per_class: int = 0
    balance_subsample: str = "top_score"
    balance_seed: int = 0
    ignore_score_thresh: float = 0.0

    def __post_init__(self) -> None:
        if self.balance_subsample not in BALANCE_SUBSAMPLE_RULES:
            raise InputError(
                f"Unknown class-balancing subsample rule {self.balance_subsample!r}; expected one "
                f"of {BALANCE_SUBSAMPLE_RULES}"
            )
        if self.max_boxes_per_image < 0 or self.images_per_class < 0 or self.min_box_size < 0:
            raise InputError(
                "max_boxes_per_image, images_per_class and min_box_size must be >= 0 "
                "(0 disables them)"
            )
        keep_min = min([self.score_thresh, *self.class_score_threshs.values()])
        if self.ignore_score_thresh < 0 or 0 < keep_min <= self.ignore_score_thresh:
            raise InputError(
                f"SSDET.PSEUDO_LABELS.IGNORE_SCORE_THRESH {self.ignore_score_thresh} must be >= 0 "
                f"and below the lowest keep threshold {keep_min} (0 disables ignore regions)"
            )

    @classmethod
    def from_config(cls, cfg) -> PseudoLabelFilter:
        """Build the filter from ``cfg.SSDET.PSEUDO_LABELS`` (see ``ssdet/config.py``)."""
        c = cfg.SSDET.PSEUDO_LABELS
        class_threshs = {}
        for pair in c.CLASS_SCORE_THRESHS:
            if len(pair) != 2:
                raise InputError(
                    "SSDET.PSEUDO_LABELS.CLASS_SCORE_THRESHS takes [class name or id, threshold] "
                    f"pairs, got {pair!r}"
                )
            class_threshs[pair[0]] = float(pair[1])
        return cls(
            score_thresh=c.SCORE_THRESH,
            class_score_threshs=class_threshs,
            max_boxes_per_image=c.MAX_BOXES_PER_IMAGE,
            min_box_size=c.MIN_BOX_SIZE,
            keep_empty_images=c.KEEP_EMPTY_IMAGES,
            balance_classes=c.BALANCE_CLASSES,
            images_per_class=c.IMAGES_PER_CLASS,
            balance_subsample=c.BALANCE_SUBSAMPLE,
            balance_seed=c.BALANCE_SEED,
            ignore_score_thresh=c.IGNORE_SCORE_THRESH,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (class keys become strings), for reports."""
        settings = dataclasses.asdict(self)
        settings["class_score_threshs"] = {str(k): v for k, v in self.class_score_threshs.items()}
        return settings

    @classmethod
    def keep_all(cls) -> PseudoLabelFilter:
        """The filter that keeps every stored box (teacher scores are >= 0) and every image."""
        return cls(score_thresh=0.0, keep_empty_images=True)

    def class_thresholds(self, class_names: Sequence[str]) -> np.ndarray:
        """float32 (C,) the score threshold of each class.

        Raises:
            InputError: for a class name or id that is not in ``class_names``.
        """
        thresholds = np.full(len(class_names), self.score_thresh, dtype=np.float32)
        for key, thresh in self.class_score_threshs.items():
            if isinstance(key, str) and key in class_names:
                thresholds[class_names.index(key)] = thresh
            elif isinstance(key, int | np.integer) and 0 <= key < len(class_names):
                thresholds[key] = thresh
            else:
                raise InputError(
                    f"Unknown class {key!r} in the per-class score thresholds; the store's classes "
                    f"are ids 0..{len(class_names) - 1} named {list(class_names)[:10]}..."
                )
        return thresholds

    def apply(self, store: PseudoLabelStore) -> PseudoLabelSelection:
        """Select boxes and images from a store, vectorized over all boxes.

        Relies on the store's invariant that boxes are score-descending within each image, so an
        image's first kept box is its highest-scoring one.

        Args:
            store: the base store.

        Returns:
            The selection; also logs a warning when it is almost empty (see
            :func:`warn_if_almost_empty`).
        """
        n = store.num_images
        thresholds = self.class_thresholds(store.class_names)
        # A threshold of 0 asks for every stored box (keep_all); only one between 0 and the floor
        # suggests the user expects boxes the teacher never stored.
        if thresholds.size and 0 < thresholds.min() < store.score_floor:
            logger.warning(
                "Pseudo-label score threshold %g is below the labeling score floor %g of %s: "
                "boxes under %g were never stored, so the threshold acts as %g.",
                thresholds.min(),
                store.score_floor,
                store.path,
                store.score_floor,
                store.score_floor,
            )
        scores = np.asarray(store.scores)
        if self.class_score_threshs:
            keep = scores >= thresholds[np.asarray(store.classes)]
        else:
            keep = scores >= np.float32(self.score_thresh)
        if self.min_box_size > 0:
            boxes = np.asarray(store.boxes)
            shorter = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            keep &= shorter >= self.min_box_size
        rows = np.flatnonzero(keep)
        # Keys are ascending, which lets searchsorted reuse its last position.
        images = np.searchsorted(store.image_offsets, rows, side="right") - 1
        counts = np.bincount(images, minlength=n)
        if self.max_boxes_per_image > 0:
            rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[images]
            within = rank < self.max_boxes_per_image
            rows, images = rows[within], images[within]
            counts = np.minimum(counts, self.max_boxes_per_image)
        box_offsets = offsets_from_counts(counts)
        box_rows = rows.astype(_row_dtype(store.num_boxes))

        labeled = np.flatnonzero(counts > 0)
        first_rows = box_rows[box_offsets[labeled]]
        image_classes = np.full(n, -1, dtype=np.int32)
        image_classes[labeled] = store.classes[first_rows]
        if self.balance_classes:
            picked = self._balance(
                labeled, image_classes[labeled], store.scores[first_rows], len(store.class_names)
            )
        else:
            picked = labeled
        if self.keep_empty_images:
            picked = np.concatenate([picked, np.flatnonzero(counts == 0)])
        ignore_offsets = ignore_rows = None
        if self.ignore_score_thresh > 0:
            ignore = scores >= np.float32(self.ignore_score_thresh)
            ignore[rows] = False
            ignore_rows = np.flatnonzero(ignore)
            ignore_images = np.searchsorted(store.image_offsets, ignore_rows, side="right") - 1
            ignore_offsets = offsets_from_counts(np.bincount(ignore_images, minlength=n))
            ignore_rows = ignore_rows.astype(_row_dtype(store.num_boxes))
        selection = PseudoLabelSelection(
            store=store,
            image_index=np.sort(picked).astype(np.int64),
            box_offsets=box_offsets,
            box_rows=box_rows,
            image_classes=image_classes,
            pseudo_filter=self,
            ignore_offsets=ignore_offsets,
            ignore_rows=ignore_rows,
        )
        logger.info(
            "Pseudo labels %s: kept %d of %d boxes on %d of %d images; %d dataset images%s%s",
            store.path,
            len(box_rows),
            store.num_boxes,
            len(labeled),
            n,
            len(selection.image_index),
            " after class balancing" if self.balance_classes else "",
            f"; {len(ignore_rows)} ignore regions (scores >= {self.ignore_score_thresh})"
            if ignore_rows is not None
            else "",
        )
        warn_if_almost_empty(selection)
        return selection

    def _balance(
        self, images: np.ndarray, classes: np.ndarray, top_scores: np.ndarray, num_classes: int
    ) -> np.ndarray:
        """Bring every class to the target image count.

        Args:
            images: int64 (L,) base images with at least one kept box, ascending.
            classes: int32 (L,) their classes.
            top_scores: float32 (L,) their highest kept score.
            num_classes: C.

        Returns:
            int64 (C' * target,) chosen base images, duplicates included; C' = classes present.
        """
        per_class = np.bincount(classes, minlength=num_classes)
        present = np.flatnonzero(per_class)
        if present.size == 0:
            return images
        target = self.images_per_class or int(round(per_class[present].mean()))
        if present.size < num_classes:
            logger.info(
                "Class balancing: %d of %d classes have no pseudo-labeled image and stay empty",
                num_classes - present.size,
                num_classes,
            )
        if self.balance_subsample == "top_score":
            # Within a class: highest top-box score first, ties by image index.
            order = np.lexsort((images, -top_scores, classes))
        else:
            order = np.lexsort((images, classes))
        grouped = images[order]
        ends = np.cumsum(per_class)
        chosen = []
        for c in present.tolist():
            members = grouped[ends[c] - per_class[c] : ends[c]]
            rng = np.random.default_rng((self.balance_seed, c))
            if len(members) >= target:
                if self.balance_subsample == "top_score":
                    chosen.append(members[:target])
                else:
                    chosen.append(rng.choice(members, size=target, replace=False))
            else:
                repeats, remainder = divmod(target, len(members))
                chosen.append(np.tile(members, repeats))
                chosen.append(rng.choice(members, size=remainder, replace=False))
        return np.concatenate(chosen)


def is_almost_empty(
    selection: PseudoLabelSelection, min_fraction: float = ALMOST_EMPTY_FRACTION
) -> bool:
    """Whether the filter left no kept box at all, or a box on fewer than ``min_fraction`` of the
    store's images: the "no pseudo boxes" failure, where the student silently trains on labeled
    data alone."""
    num_with_box = int(np.count_nonzero(selection.kept_boxes_per_image()))
    return selection.num_kept_boxes == 0 or num_with_box < min_fraction * selection.store.num_images


def warn_if_almost_empty(
    selection: PseudoLabelSelection, min_fraction: float = ALMOST_EMPTY_FRACTION
) -> bool:
    """Log a warning naming the threshold when :func:`is_almost_empty`; return whether it did."""
    if not is_almost_empty(selection, min_fraction):
        return False
    store = selection.store
    num_with_box = int(np.count_nonzero(selection.kept_boxes_per_image()))
    fraction = num_with_box / store.num_images if store.num_images else 0.0
    pseudo_filter = selection.pseudo_filter
    per_class = (
        f" (per-class overrides {dict(pseudo_filter.class_score_threshs)})"
        if pseudo_filter.class_score_threshs
        else ""
    )
    highest = f"{float(np.max(store.scores)):.3f}" if store.num_boxes else "none: no stored boxes"
    logger.warning(
        "Almost no pseudo boxes: the filter kept %d boxes on %d of %d images (%.2f%%, below "
        "%.0f%%) "
        "of %s at SSDET.PSEUDO_LABELS.SCORE_THRESH=%g%s, MIN_BOX_SIZE=%g. The student would train "
        "on (almost) no pseudo labels. Lower SSDET.PSEUDO_LABELS.SCORE_THRESH (the teacher's "
        "highest stored score is %s) or check the teacher: its weights, its classes, and that it "
        "sees the images it should.",
        selection.num_kept_boxes,
        num_with_box,
        store.num_images,
        100 * fraction,
        100 * min_fraction,
        store.path,
        pseudo_filter.score_thresh,
        per_class,
        pseudo_filter.min_box_size,
        highest,
    )
    return True


def check_pseudo_labels(store_dir: str, cfg: CfgNode, teacher_weights: str = "") -> dict[str, int]:
    """Check that the student's filter keeps pseudo boxes of a store, and count them.

    Args:
        store_dir: the pseudo-label store.
        cfg: the student's config (``SSDET.PSEUDO_LABELS``: thresholds, balancing, ...).
        teacher_weights: the teacher's checkpoint, named in the error.

    Returns:
        ``{"images": stored images, "images_with_boxes": images with a kept box,
        "boxes": kept boxes}``.

    Raises:
        InputError: the filter keeps no box.
    """
    store = PseudoLabelStore.open(store_dir)
    selection = PseudoLabelFilter.from_config(cfg).apply(store)
    counts = {
        "images": int(store.num_images),
        "images_with_boxes": int(np.count_nonzero(selection.kept_boxes_per_image())),
        "boxes": int(selection.num_kept_boxes),
    }
    if counts["boxes"]:
        return counts
    labels = cfg.SSDET.PSEUDO_LABELS
    teacher = f" ({teacher_weights})" if teacher_weights else ""
    if store.num_boxes:
        found = (
            f"its highest score is {float(np.max(store.scores)):.3f}, below "
            f"SSDET.PSEUDO_LABELS.SCORE_THRESH {labels.SCORE_THRESH}"
        )
        if labels.CLASS_SCORE_THRESHS:
            found += f" (CLASS_SCORE_THRESHS {list(labels.CLASS_SCORE_THRESHS)})"
        if labels.MIN_BOX_SIZE:
            found += f" or its boxes are below MIN_BOX_SIZE {labels.MIN_BOX_SIZE}"
    else:
        found = (
            "it scored no box even at the labeling floor SSDET.LABELING.SCORE_FLOOR "
            f"{cfg.SSDET.LABELING.SCORE_FLOOR}"
        )
    raise InputError(
        f"The teacher{teacher} gives no pseudo box that the student keeps on the "
        f"{store.num_images} images of {store.path}: {found}. Lower "
        "SSDET.PSEUDO_LABELS.SCORE_THRESH (the labels are kept: a rerun does not label again), or "
        "train the teacher longer (SOLVER.MAX_ITER, for the teacher only in "
        "SSDET.EXPERIMENT.TEACHER_OPTS)."
    )
