"""The value checks of a pseudo-label store, run whenever a store is opened or built.

A store can be damaged after it was built (a disk error, a hand edit, another tool's writer): a NaN
box, an inverted one or an out-of-range class id would train silently or crash deep in the
student's loss, a duplicate image id would skew the evaluation. :func:`find_problems` checks every
invariant of the format (see :mod:`~ssdet.data.pseudo_labels.store`) in one vectorized pass:

- ``image_offsets`` and ``file_name_offsets`` never decrease (their ends are checked with the
  shapes), and no file name is empty;
- ``image_ids`` are unique;
- ``heights`` and ``widths`` are not negative, and are both known or both 0 (unknown);
- ``boxes`` are finite, with x0 < x1 and y0 < y1;
- ``scores`` are finite and descending within each image (the filter's top-k relies on it);
- ``classes`` are in ``[0, num_classes)``.

The per-box columns (~30 bytes per box: most of a store) are streamed in chunks of
:data:`CHUNK_ROWS` rows through ``pread``, so the check holds a few tens of MB at any store size
and leaves none of their pages mapped in the process; the per-image columns are read whole. At
ImageNet scale (1.28M images, 12.8M boxes) it takes well under a second from the page cache
(``benchmarks/bench_pseudo_store.py --validation-only``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["CHUNK_ROWS", "find_problems"]

# Box rows read at a time: 16 MB of boxes.
CHUNK_ROWS = 1 << 20
# Bad rows named per problem in the message.
_FIRST_ROWS = 5
# The order of the messages, which must not depend on the chunk in which a problem shows first.
_COLUMN_ORDER = (
    "image_offsets",
    "file_name_offsets",
    "image_ids",
    "heights",
    "widths",
    "heights/widths",
    "boxes",
    "scores",
    "classes",
)


class _Problems:
    """Per (column, problem): how many rows have it, and the first few of them."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], tuple[int, list[int], list]] = {}

    def add(
        self, column: str, what: str, rows: np.ndarray, values: np.ndarray | None = None
    ) -> None:
        """Record bad rows (ascending, across calls too) and, optionally, their values."""
        if not len(rows):
            return
        count, first, first_values = self._found.get((column, what), (0, [], []))
        room = _FIRST_ROWS - len(first)
        first = first + rows[:room].tolist()
        if values is not None:
            first_values = first_values + values[:room].tolist()
        self._found[(column, what)] = (count + len(rows), first, first_values)

    def messages(self) -> list[str]:
        messages = []
        for column, what in sorted(self._found, key=lambda k: (_COLUMN_ORDER.index(k[0]), k[1])):
            count, first, values = self._found[(column, what)]
            where = f"first rows {first}" + (f", values {values}" if values else "")
            messages.append(f"{column}: {count} {what} ({where})")
        return messages


def _check_offsets(problems: _Problems, name: str, offsets: np.ndarray, total: int) -> bool:
    """Offsets into a column of ``total`` rows; True when they never decrease.

    Their first and last values (0 and ``total``) are checked with the shapes, so offsets that
    never decrease all lie in ``[0, total]``.
    """
    steps = np.diff(offsets)
    if not len(steps) or steps.min() >= 0:
        return True
    problems.add(name, "offsets below the one before", np.flatnonzero(steps < 0) + 1)
    outside = np.flatnonzero((offsets < 0) | (offsets > total))
    problems.add(name, f"offsets outside [0, {total}]", outside, offsets[outside])
    return False


def _check_boxes(problems: _Problems, start: int, boxes: np.ndarray) -> None:
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    smallest = min(widths.min(), heights.min())
    largest = max(widths.max(), heights.max())
    # NaN propagates through min and max, and fails the comparison: one test for the usual case.
    if smallest > 0 and largest < np.inf:
        return
    finite = np.isfinite(boxes).all(axis=1)
    inverted = finite & ((widths < 0) | (heights < 0))
    empty = finite & ~inverted & ((widths == 0) | (heights == 0))
    for what, bad in (
        ("boxes with a NaN or infinite coordinate", ~finite),
        ("boxes with x0 > x1 or y0 > y1", inverted),
        ("empty boxes (x0 == x1 or y0 == y1)", empty),
    ):
        problems.add("boxes", what, start + np.flatnonzero(bad))


def _check_scores(
    problems: _Problems, start: int, scores: np.ndarray, image_starts: np.ndarray | None
) -> None:
    """``scores`` are rows ``[start, start + len)``, preceded by row ``start - 1`` when start > 0.

    Args:
        image_starts: the first rows of the images from the second on (ascending), or None when
            the image offsets are broken (the order within images is then not checked).
    """
    lead = 1 if start > 0 else 0
    own = scores[lead:]
    if not (np.isfinite(own.min()) and np.isfinite(own.max())):
        bad = start + np.flatnonzero(~np.isfinite(own))
        problems.add("scores", "scores that are NaN or infinite", bad)
    if image_starts is None or len(scores) < 2:
        return
    first = start - lead
    rising = scores[1:] > scores[:-1]  # rising[j]: row first + 1 + j scores above the row before
    # A rise is fine where an image starts.
    lo, hi = np.searchsorted(image_starts, [first + 1, first + len(scores)])
    rising[image_starts[lo:hi] - first - 1] = False
    problems.add(
        "scores",
        "scores above the one before within an image (boxes must be score-descending)",
        first + 1 + np.flatnonzero(rising),
    )


def _check_classes(problems: _Problems, start: int, classes: np.ndarray, num_classes: int) -> None:
    if classes.min() >= 0 and classes.max() < num_classes:
        return
    bad = np.flatnonzero((classes < 0) | (classes >= num_classes))
    problems.add("classes", f"class ids outside [0, {num_classes})", start + bad, classes[bad])


def find_problems(
    columns: Mapping[str, np.ndarray],
    num_classes: int,
    read_rows: Callable[[str, int, int], np.ndarray],
    chunk_rows: int = CHUNK_ROWS,
) -> list[str]:
    """Check a store's values; one message per kind of bad value, naming its column.

    The columns' dtypes and shapes, and the ends of the offsets, must have been checked (they are
    when :class:`~ssdet.data.pseudo_labels.store.PseudoLabelStore` maps a store).

    Args:
        columns: column name -> array (memory-mapped); the per-image columns are read from these.
        num_classes: number of class names of the store.
        read_rows: ``(column, start, stop) -> rows``, how the per-box columns are read
            (:meth:`~ssdet.data.pseudo_labels.store.ColumnReader.rows`).
        chunk_rows: per-box rows read at a time.

    Returns:
        ``"<column>: <count> <problem> (first rows [...], values [...])"`` for each problem found;
        empty for a sound store.
    """
    problems = _Problems()
    num_boxes = len(columns["scores"])
    image_offsets = np.asarray(columns["image_offsets"])
    offsets_ok = _check_offsets(problems, "image_offsets", image_offsets, num_boxes)
    name_offsets = np.asarray(columns["file_name_offsets"])
    num_name_bytes = len(columns["file_name_bytes"])
    if _check_offsets(problems, "file_name_offsets", name_offsets, num_name_bytes):
        empty = np.flatnonzero(np.diff(name_offsets) == 0)
        problems.add("file_name_offsets", "empty file names", empty)

    ids = np.asarray(columns["image_ids"])
    # Builders write ids ascending; only another order needs the sort.
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        order = np.argsort(ids, kind="stable")
        repeats = np.sort(order[1:][ids[order[1:]] == ids[order[:-1]]])
        problems.add("image_ids", "ids that an earlier image already has", repeats, ids[repeats])
    heights, widths = np.asarray(columns["heights"]), np.asarray(columns["widths"])
    for name, sizes in (("heights", heights), ("widths", widths)):
        if len(sizes) and sizes.min() < 0:
            bad = np.flatnonzero(sizes < 0)
            problems.add(name, f"negative {name}", bad, sizes[bad])
    problems.add(
        "heights/widths",
        "images with only one of height and width known (0 = unknown, for both)",
        np.flatnonzero((heights == 0) != (widths == 0)),
    )

    image_starts = image_offsets[1:-1] if offsets_ok else None
    for start in range(0, num_boxes, chunk_rows):
        stop = min(start + chunk_rows, num_boxes)
        _check_boxes(problems, start, read_rows("boxes", start, stop))
        # One row of overlap: the order of scores is checked across the chunks' border too.
        _check_scores(problems, start, read_rows("scores", max(start - 1, 0), stop), image_starts)
        _check_classes(problems, start, read_rows("classes", start, stop), num_classes)
    return problems.messages()
