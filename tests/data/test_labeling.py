"""The teacher's input: listing registered datasets and folders, and the shared resolver."""

import os

import pytest
import torch
from detectron2.structures import ImageList

from ssdet.data.image_folder import image_source_kind
from ssdet.data.labeling import ImageListing, ShapeBatcher
from ssdet.utils.errors import InputError


def test_listing_of_datasets_and_folders(tiny_world, tmp_path):
    by_name = ImageListing.from_input("mini_imagenet_train")
    by_folder = ImageListing.from_input(os.path.join(tiny_world, "mini_imagenet", "train"))
    assert by_name.root == by_folder.root and by_name.paths.tolist() == by_folder.paths.tolist()
    assert len(by_name) == 68 and by_name.relative_path(0).count("/") == 1
    assert by_name.sha256() == by_folder.sha256()

    coco = ImageListing.from_input("mini_coco_val")
    assert len(coco) == 8 and os.path.isfile(coco.file_name(7))

    for name in ("b.jpg", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    flat = ImageListing.from_input(str(tmp_path))
    assert [flat.relative_path(i) for i in range(len(flat))] == ["a.png", "b.jpg"]

    for missing in ("no_such_dataset", str(tmp_path / "no_such_folder")):
        with pytest.raises(InputError, match="neither a folder nor a registered dataset"):
            ImageListing.from_input(missing)


def test_a_registered_name_wins_over_a_folder_and_neither_is_none(
    tiny_world, tmp_path, monkeypatch
):
    assert image_source_kind("mini_imagenet_train") == "dataset"
    assert image_source_kind(str(tmp_path)) == "folder"
    assert image_source_kind(str(tmp_path / "no_such_folder")) is None
    monkeypatch.chdir(tmp_path)
    os.mkdir("mini_imagenet_train")
    assert image_source_kind("mini_imagenet_train") == "dataset"


def test_shape_batcher_groups_by_padded_shape():
    batcher = ShapeBatcher(batch_size=2, size_divisibility=32)
    for h, w in [(64, 64), (50, 64), (65, 64), (64, 96)]:
        padded = ImageList.from_tensors([torch.zeros(3, h, w)], 32).tensor.shape[-2:]
        assert batcher.padded_shape(h, w) == tuple(padded)

    def item(i, h, w):
        return {"index": i, "image": torch.zeros(3, h, w, dtype=torch.uint8)}

    assert batcher.add(item(0, 64, 64)) == []
    assert batcher.add(item(1, 64, 90)) == []
    (batch,) = batcher.add(item(2, 50, 60))  # pads to 64 x 64, as image 0 does
    assert [r["index"] for r in batch] == [0, 2]
    assert [[r["index"] for r in b] for b in batcher.flush()] == [[1]]

    bounded = ShapeBatcher(batch_size=4, size_divisibility=32, max_buffered=3)
    assert bounded.add(item(0, 64, 64)) == bounded.add(item(1, 96, 64)) == []
    (batch,) = bounded.add(item(2, 64, 64))
    assert [r["index"] for r in batch] == [0, 2]
