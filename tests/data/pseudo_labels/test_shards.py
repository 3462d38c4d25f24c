"""Tests of the shard writer and the merge of shards into a store."""

import os

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from ssdet.data.pseudo_labels import (
    PseudoLabelShardWriter,
    PseudoLabelStore,
    check_shard,
    merge_shards,
)
from ssdet.utils.errors import InputError

from .conftest import CLASSES, make_provenance, random_detections, write_shards, write_store


def test_round_trip(tmp_path):
    writer = PseudoLabelShardWriter(tmp_path / "s.npz", len(CLASSES), score_floor=0.05)
    writer.add(
        5,
        "b/é.jpg",
        10,
        20,
        np.array([[0, 0, 5, 5], [1, 1, 4, 4], [2, 2, 9, 9]]),
        np.array([0.3, 0.9, 0.01]),  # 0.01 is below the floor; 0.9 must come first
        np.array([1, 2, 0]),
    )
    writer.add(2, "a.jpg", 0, 0, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    writer.add_failure(3, "broken.jpg", "truncated JPEG")
    assert len(writer) == 3
    store = merge_shards([writer.write()], tmp_path / "store", make_provenance(listing_size=None))

    assert store.num_images == 2 and store.num_boxes == 2
    np.testing.assert_array_equal(store.image_ids, [2, 5])  # listing order
    np.testing.assert_array_equal(store.image_offsets, [0, 0, 2])
    np.testing.assert_array_equal(store.boxes, [[1, 1, 4, 4], [0, 0, 5, 5]])
    np.testing.assert_allclose(store.scores, [0.9, 0.3])
    np.testing.assert_array_equal(store.classes, [2, 1])
    np.testing.assert_array_equal(store.heights, [0, 10])
    assert [store.file_name(i) for i in range(2)] == ["a.jpg", "b/é.jpg"]

    meta = store.metadata
    assert meta["counts"] == {"images": 2, "boxes": 2, "failed_images": 1}
    assert meta["failed_images"] == [
        {"index": 3, "file_name": "broken.jpg", "reason": "truncated JPEG"}
    ]
    assert meta["class_names"] == CLASSES and meta["score_floor"] == pytest.approx(0.05)
    assert meta["teacher"]["weights_sha256"] == "ab" * 32
    assert len(meta["teacher"]["config_sha256"]) == 64
    assert {"ssdet", "detectron2"} <= set(meta["versions"]) and meta["created"]


def test_add_instances(tmp_path):
    instances = Instances((30, 40))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    instances.scores = torch.tensor([0.7])
    instances.pred_classes = torch.tensor([2])
    writer = PseudoLabelShardWriter(tmp_path / "s.npz", len(CLASSES))
    writer.add_instances(0, "x.jpg", instances)
    store = merge_shards([writer.write()], tmp_path / "store", make_provenance())
    assert (store.heights[0], store.widths[0]) == (30, 40)
    np.testing.assert_array_equal(store.boxes, [[1, 2, 3, 4]])
    assert store.classes[0] == 2


def test_writer_rejects_bad_detections(tmp_path):
    writer = PseudoLabelShardWriter(tmp_path / "s.npz", len(CLASSES))
    with pytest.raises(ValueError, match="class ids"):
        writer.add(0, "x", 1, 1, np.zeros((1, 4)), [0.9], [3])
    with pytest.raises(ValueError, match="non-finite"):
        writer.add(0, "x", 1, 1, [[0, 0, np.nan, 1]], [0.9], [0])


def test_merge_is_canonical(tmp_path):
    """Any sharding and any shard order give byte-identical stores."""
    images = random_detections(23)
    n = len(images)
    layouts = {
        "one": [range(n)],
        "blocks": [range(0, 9), range(9, 15), range(15, n)],
        "strided": [range(r, n, 4) for r in range(4)],
        "strided_reversed": [range(r, n, 4) for r in reversed(range(4))],
        "with_empty_shard": [range(0), range(n - 1, -1, -1)],
    }
    stores = {
        tag: merge_shards(
            write_shards(tmp_path, images, groups, tag),
            tmp_path / tag,
            make_provenance(listing_size=n),
        )
        for tag, groups in layouts.items()
    }
    reference = stores["one"]
    assert reference.num_images == n - len(range(3, n, 7)) and reference.num_boxes > 0
    for tag, store in stores.items():
        for name in sorted(os.listdir(reference.path)):
            with open(os.path.join(reference.path, name), "rb") as a:
                with open(os.path.join(store.path, name), "rb") as b:
                    if name != "metadata.json":
                        assert a.read() == b.read(), (tag, name)
        meta_a, meta_b = reference.metadata, store.metadata
        meta_a.pop("created"), meta_b.pop("created")
        assert meta_a == meta_b, tag


def test_merge_rejects_duplicates_missing_and_mixed_floors(tmp_path):
    images = random_detections(6)
    paths = write_shards(tmp_path, images, [range(0, 4), range(3, 6)], "dup")
    with pytest.raises(InputError, match="more than one"):
        merge_shards(paths, tmp_path / "dup", make_provenance())
    paths = write_shards(tmp_path, images, [range(0, 4)], "missing")
    with pytest.raises(InputError, match="2 missing"):
        merge_shards(paths, tmp_path / "missing", make_provenance(listing_size=6))
    other = PseudoLabelShardWriter(tmp_path / "floor.npz", len(CLASSES), score_floor=0.3)
    other.add(5, "x", 1, 1, np.zeros((0, 4)), [], [])
    with pytest.raises(InputError, match="score floors"):
        merge_shards(paths + [other.write()], tmp_path / "floors", make_provenance())
    with pytest.raises(InputError, match="classes"):
        merge_shards(paths, tmp_path / "classes", make_provenance(class_names=["a"]))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_merge_refuses_to_overwrite_unless_asked(tmp_path):
    store = write_store(tmp_path, [("a.jpg", 4, 4, [(0, 0, 1, 1, 0.9, 0)])])
    with pytest.raises(FileExistsError):
        merge_shards([tmp_path / "store.npz"], store.path, make_provenance())
    writer = PseudoLabelShardWriter(tmp_path / "new.npz", len(CLASSES))
    writer.add(0, "b.jpg", 4, 4, np.zeros((0, 4)), [], [])
    merge_shards([writer.write()], store.path, make_provenance(), overwrite=True)
    assert PseudoLabelStore.open(store.path).file_name(0) == "b.jpg"
    assert sorted(os.listdir(tmp_path)) == ["new.npz", "store", "store.npz"]


@pytest.mark.parametrize("damage", ["truncated", "bit flip in the boxes", "not a zip"])
def test_a_damaged_shard_is_named_with_the_fix(tmp_path, damage):
    (path,) = write_shards(tmp_path, random_detections(6), [range(6)], "shard")
    data = bytearray(open(path, "rb").read())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bit flip in the boxes":
        # np.savez stores arrays uncompressed: only the zip's CRC-32 tells this flip.
        boxes = np.load(path)["boxes"].tobytes()
        data[data.index(boxes) + len(boxes) // 2] ^= 0x10
    else:
        data = bytearray(b"chunk 3, see the log\n")
    open(path, "wb").write(bytes(data))
    message = f"pseudo-label shard {path} is damaged .*Delete it and run tools/pseudo_label.py"
    with pytest.raises(InputError, match=message):
        check_shard(path)
    with pytest.raises(InputError, match=message):
        merge_shards([path], tmp_path / "store", make_provenance())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0.npz"]
