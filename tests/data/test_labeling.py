"""The teacher's input: listing registered datasets and folders, and the shared resolver."""

import os

import pytest

from ssdet.data.image_folder import image_source_kind
from ssdet.data.labeling import ImageListing
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
