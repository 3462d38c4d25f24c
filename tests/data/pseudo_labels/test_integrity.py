"""A store's values are checked when it opens and before it is published, its checksums by
``verify_store`` (issue 16, item 8). The tool's ``--verify``: tests/reliability/test_error_lines.py.
"""

import json
import logging
import os

import numpy as np
import pytest

from ssdet.data.pseudo_labels import (
    PseudoLabelStore,
    PseudoLabelStoreError,
    file_sha256,
    import_coco_json,
    verify_store,
)
from ssdet.data.pseudo_labels.integrity import find_problems

from ...conftest import STORE_COLUMNS
from .conftest import CLASSES, mapped_store_kb, write_store

# 4 images x 3 boxes: store rows 0-11, image i holds rows 3i..3i+2, scores descending in each.
IMAGES = [
    (
        f"img/{i}.jpg",
        20,
        30,
        [(0, 0, 10, 10, 0.9, 0), (1, 1, 5, 6, 0.5, 1), (2, 2, 8, 9, 0.3, 2)],
    )
    for i in range(4)
]


def damage(store_path: str, column: str, edit) -> None:
    """Change a column's values in place, as a disk error or a hand edit would (the checksums
    in metadata.json are left as they were)."""
    array = np.load(os.path.join(store_path, column + ".npy"), mmap_mode="r+")
    edit(array)
    array.flush()
    del array


def edit_metadata(store_path: str, edit) -> None:
    path = os.path.join(store_path, "metadata.json")
    metadata = json.load(open(path))
    edit(metadata)
    json.dump(metadata, open(path, "w"))


@pytest.fixture
def store(tmp_path) -> PseudoLabelStore:
    return write_store(tmp_path, IMAGES)


def test_a_sound_store_opens_and_verifies(store):
    assert PseudoLabelStore.open(store.path).num_boxes == 12
    checksums = store.metadata["column_sha256"]
    assert set(checksums) == set(STORE_COLUMNS)
    for column in STORE_COLUMNS:
        assert checksums[column] == file_sha256(os.path.join(store.path, column + ".npy"))
    summary = verify_store(store.path)
    assert "4 images, 12 boxes" in summary and "SHA-256 of all 9 columns match" in summary


def _set(index, value):
    def edit(array):
        array[index] = value

    return edit


def _swap(i, j):
    def edit(array):
        array[[i, j]] = array[[j, i]]

    return edit


NONFINITE = "boxes with a NaN or infinite coordinate"
INVERTED = "boxes with x0 > x1 or y0 > y1"
RISING = "scores above the one before within an image (boxes must be score-descending)"
HALF_KNOWN = "images with only one of height and width known (0 = unknown, for both)"
# Each kind of bad value: (column, edit, what the message says; None: not bad).
DAMAGES = {
    "nan box": ("boxes", _set((1, 2), np.nan), f"boxes: 1 {NONFINITE} (first rows [1])"),
    "infinite box": ("boxes", _set((7, 1), -np.inf), f"boxes: 1 {NONFINITE} (first rows [7])"),
    "x0 > x1": ("boxes", _set((4, 0), 50.0), f"boxes: 1 {INVERTED} (first rows [4])"),
    "y0 > y1": ("boxes", _set((5, 3), 0.0), f"boxes: 1 {INVERTED} (first rows [5])"),
    "zero width": (
        "boxes",
        _set((2, 2), 2.0),
        "boxes: 1 empty boxes (x0 == x1 or y0 == y1) (first rows [2])",
    ),
    "negative class": (
        "classes",
        _set(3, -1),
        "classes: 1 class ids outside [0, 3) (first rows [3], values [-1])",
    ),
    "class >= num classes": (
        "classes",
        _set([1, 4, 10], 3),
        "classes: 3 class ids outside [0, 3) (first rows [1, 4, 10], values [3, 3, 3])",
    ),
    "infinite score": (
        "scores",
        _set(6, np.inf),
        "scores: 1 scores that are NaN or infinite (first rows [6])",
    ),
    "unsorted scores": ("scores", _set(8, 0.95), f"scores: 1 {RISING} (first rows [8])"),
    "duplicate image id": (
        "image_ids",
        _set(2, 0),
        "image_ids: 1 ids that an earlier image already has (first rows [2], values [0])",
    ),
    "unsorted unique ids": ("image_ids", _swap(0, 3), None),
    "negative height": (
        "heights",
        _set(1, -20),
        "heights: 1 negative heights (first rows [1], values [-20])",
    ),
    "zero width only": ("widths", _set(2, 0), f"heights/widths: 1 {HALF_KNOWN} (first rows [2])"),
    "box offsets not monotone": (
        "image_offsets",
        _swap(1, 2),
        "image_offsets: 1 offsets below the one before (first rows [2])",
    ),
    "file-name offset out of range": (
        "file_name_offsets",
        _set(2, 10_000),
        "file_name_offsets: 1 offsets outside [0, 36] (first rows [2], values [10000])",
    ),
    "empty file name": (
        "file_name_offsets",
        _set(2, 9),
        "file_name_offsets: 1 empty file names (first rows [1])",
    ),
}


@pytest.mark.parametrize("column,edit,message", DAMAGES.values(), ids=DAMAGES.keys())
def test_each_bad_value_is_named_with_its_rows_and_count(store, column, edit, message):
    damage(store.path, column, edit)
    if message is None:
        PseudoLabelStore.open(store.path)
        return
    with pytest.raises(PseudoLabelStoreError) as raised:
        PseudoLabelStore.open(store.path)
    text = str(raised.value)
    # One line for the tools' "error:", naming the store, the column, the count and the rows.
    assert "\n" not in text
    assert text.startswith(f"pseudo-label store {store.path} has bad values: ")
    assert message in text, text
    assert "tools/pseudo_label.py --resume" in text


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["counts"].update(images=5), "image_offsets.npy has shape (5,), expected (6,)"),
        (lambda m: m["counts"].update(boxes=11), "boxes.npy has shape (12, 4), expected (11, 4)"),
        (lambda m: m["counts"].update(failed_images=2), "counts 2 failed images but lists 0"),
        (lambda m: m.pop("class_names"), "lacks the counts, class names or score floor"),
    ],
)
def test_counts_that_do_not_match_the_columns(store, edit, message):
    edit_metadata(store.path, edit)
    with pytest.raises(PseudoLabelStoreError, match="incomplete or not a pseudo-label store") as e:
        PseudoLabelStore.open(store.path)
    assert message in str(e.value)


def test_every_chunk_size_finds_the_same_problems(store):
    """The per-box columns are checked in chunks: rows at a chunk's border are checked too."""
    damage(store.path, "scores", _set([3, 6], 0.99))  # rises at image starts: fine
    damage(store.path, "scores", _set(5, 0.7))  # a rise from row 4 to 5, within image 1
    damage(store.path, "boxes", _set((11, 0), np.nan))
    damage(store.path, "classes", _set([0, 9], 7))
    reader = store.reader()
    columns = {c: getattr(store, c) for c in STORE_COLUMNS}
    found = {
        chunk: find_problems(columns, len(CLASSES), reader.rows, chunk_rows=chunk)
        for chunk in (1, 2, 5, 12, 1000)
    }
    assert found[1000] == [
        "boxes: 1 boxes with a NaN or infinite coordinate (first rows [11])",
        "scores: 1 scores above the one before within an image (boxes must be score-descending) "
        "(first rows [5])",
        "classes: 2 class ids outside [0, 3) (first rows [0, 9], values [7, 7])",
    ]
    assert all(problems == found[1000] for problems in found.values()), found


def test_only_the_first_rows_are_named_but_all_are_counted(tmp_path):
    images = [(f"{i}.jpg", 8, 8, [(0, 0, 4, 4, 0.9, 0)]) for i in range(40)]
    store = write_store(tmp_path, images)
    damage(store.path, "classes", _set(slice(10, 40), 5))
    with pytest.raises(PseudoLabelStoreError, match=r"classes: 30 class ids outside \[0, 3\) "):
        PseudoLabelStore.open(store.path)
    with pytest.raises(PseudoLabelStoreError, match=r"first rows \[10, 11, 12, 13, 14\], values"):
        PseudoLabelStore.open(store.path)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc smaps")
def test_open_reads_no_more_than_it_checks(tmp_path):
    """Opening checks values only: file names are neither read nor decoded, checksums not
    computed, and the per-box columns are streamed, leaving none of their pages mapped."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(4000):
        xy = rng.uniform(0, 50, size=(8, 2))
        scores = np.sort(rng.uniform(0, 1, size=8))[::-1]
        dets = [(*xy[k], *(xy[k] + 5), scores[k], k % 3) for k in range(8)]
        images.append((f"images/{i:06d}.jpg", 64, 64, dets))
    store = write_store(tmp_path, images)
    # Bytes that are no UTF-8 in every file name, and stale checksums for file_name_bytes.
    damage(store.path, "file_name_bytes", _set(slice(None), 0xFF))
    opened = PseudoLabelStore.open(store.path)
    per_box = ("boxes", "scores", "classes", "file_name_bytes")
    assert sum(getattr(opened, c).nbytes for c in per_box) > 500_000
    assert mapped_store_kb(store.path, per_box) == 0
    with pytest.raises(PseudoLabelStoreError, match="file_name_bytes.npy differ from the SHA-256"):
        verify_store(store.path)


def test_a_changed_column_fails_verify_but_opens(store):
    # A value that passes every check (still score-descending): only the checksum sees it.
    damage(store.path, "scores", _set(2, 0.25))
    PseudoLabelStore.open(store.path)
    with pytest.raises(PseudoLabelStoreError) as e:
        verify_store(store.path)
    assert f"pseudo-label store {store.path} fails its checksums: scores.npy differ" in str(e.value)


def test_a_store_without_checksums_opens_and_says_so(store, caplog):
    edit_metadata(store.path, lambda m: m.pop("column_sha256"))
    # On the module's logger itself: a tool's setup may have stopped "ssdet" from propagating.
    logger = logging.getLogger("ssdet.data.pseudo_labels.store")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            PseudoLabelStore.open(store.path)
    finally:
        logger.removeHandler(caplog.handler)
    assert any("has no column checksums" in r.getMessage() for r in caplog.records)
    assert "no checksums recorded" in verify_store(store.path)
    # The value checks still run on such a store.
    damage(store.path, "classes", _set(0, 9))
    with pytest.raises(PseudoLabelStoreError, match="classes: 1 class ids outside"):
        verify_store(store.path)


def test_a_build_with_bad_values_publishes_nothing(tmp_path):
    """import_coco_json of another tool's labels: an empty box refuses the store before it is
    published (and the merge of shards is checked the same way)."""
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [2, 2, 0, 4], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "score": 0.8},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    json.dump(coco, open(tmp_path / "labels.json", "w"))
    with pytest.raises(PseudoLabelStoreError) as e:
        import_coco_json(tmp_path / "labels.json", tmp_path / "store")
    assert str(e.value).startswith(
        f"Refusing to write pseudo-label store {tmp_path / 'store'} (import_coco_json): its input "
        "has bad values: boxes: 1 empty boxes (x0 == x1 or y0 == y1) (first rows [0])"
    )
    assert sorted(os.listdir(tmp_path)) == ["labels.json"]
