"""Tests of the pseudo-label store: format, refusal of incomplete stores, pickling, column reads."""

import os
import pickle

import numpy as np
import pytest

from ssdet.data.pseudo_labels import (
    PseudoLabelDataset,
    PseudoLabelFilter,
    PseudoLabelStore,
    PseudoLabelStoreError,
)

from .conftest import write_store


def test_no_pickle_anywhere(tmp_path):
    store = write_store(tmp_path, [("a.jpg", 4, 4, [(0, 0, 1, 1, 0.9, 0)])])
    for name in os.listdir(store.path):
        if name.endswith(".npy"):
            array = np.load(os.path.join(store.path, name), mmap_mode="r", allow_pickle=False)
            assert array.dtype != object
    with np.load(tmp_path / "store.npz", allow_pickle=False) as shard:
        assert all(shard[k].dtype != object for k in shard.files)


def test_incomplete_store_is_refused(tmp_path):
    store = write_store(tmp_path, [("a.jpg", 4, 4, [(0, 0, 1, 1, 0.9, 0)])])
    os.remove(os.path.join(store.path, "scores.npy"))
    with pytest.raises(
        PseudoLabelStoreError, match="incomplete or not a pseudo-label store.*scores"
    ):
        PseudoLabelStore.open(store.path)
    os.remove(os.path.join(store.path, "metadata.json"))
    with pytest.raises(PseudoLabelStoreError, match="incomplete or not a pseudo-label store"):
        PseudoLabelStore.open(store.path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metadata.json").write_text('{"format": "something else"}')
    with pytest.raises(PseudoLabelStoreError, match="incomplete or not a pseudo-label store"):
        PseudoLabelStore.open(tmp_path / "other")


def test_store_pickles_as_its_path(tmp_path):
    images = [("a.jpg", 4, 4, [(0, 0, 1, 1, 0.9, 0)] * 50)]
    store = write_store(tmp_path, images)
    data = pickle.dumps(store)
    assert len(data) < 1000  # the path, not the arrays
    np.testing.assert_array_equal(pickle.loads(data).boxes, store.boxes)
    # A dataset sent to spawned DataLoader workers comes back whole, its store re-mapped.
    dataset = PseudoLabelDataset(PseudoLabelFilter().apply(store))
    assert pickle.loads(pickle.dumps(dataset))[0] == dataset[0]


def test_column_reader_rows(tmp_path, filter_store):
    reader = filter_store.reader()
    for name in ("boxes", "scores", "classes", "image_ids", "file_name_bytes"):
        column = getattr(filter_store, name)
        for start, stop in ((0, len(column)), (1, 2), (len(column) - 1, len(column)), (1, 1)):
            got = reader.rows(name, start, stop)
            assert got.dtype == column.dtype
            np.testing.assert_array_equal(got, column[start:stop])
    with pytest.raises(PseudoLabelStoreError, match="short read of scores.npy"):
        reader.rows("scores", 0, len(filter_store.scores) + 5)
