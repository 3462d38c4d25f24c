import logging
import os

import cv2
import numpy as np
import pytest

from ssdet.data import ImageFolderListing
from ssdet.utils.errors import InputError


def make_folder(root, counts: dict[str, int]) -> str:
    for name, n in counts.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n):
            cv2.imwrite(os.path.join(root, name, f"img_{i}.jpg"), np.zeros((4, 4, 3), np.uint8))
    return str(root)


def test_listing_classes_labels_and_paths(tmp_path):
    root = make_folder(tmp_path / "train", {"b_cls": 2, "a_cls": 3})
    (tmp_path / "train" / "a_cls" / "notes.txt").write_text("not an image")
    listing = ImageFolderListing(root, cache_dir=str(tmp_path / "cache"))
    assert listing.class_names == ["a_cls", "b_cls"]
    assert len(listing) == 5
    assert listing.labels.tolist() == [0, 0, 0, 1, 1]
    item = listing[3]
    assert item["file_name"] == os.path.join(root, "b_cls", "img_0.jpg")
    assert item["class_id"] == 1 and item["image_id"] == 3
    assert listing[-1]["image_id"] == 4
    with pytest.raises(IndexError):
        listing[5]


def test_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "train", {"a": 2, "b": 2})
    cache = str(tmp_path / "cache")
    ImageFolderListing(root, cache_dir=cache)
    assert len(os.listdir(cache)) == 1

    def no_listing(self):
        raise AssertionError("listed the files again despite a valid cache")

    with monkeypatch.context() as m:
        m.setattr(ImageFolderListing, "_list_files", no_listing)
        assert len(ImageFolderListing(root, cache_dir=cache)) == 4
    make_folder(tmp_path / "train", {"b": 3})  # adds img_2.jpg to b/: its mtime changes
    assert len(ImageFolderListing(root, cache_dir=cache)) == 5


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ImageFolderListing(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class sub-folders"):
        ImageFolderListing(str(tmp_path / "empty"))
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(InputError, match="no image files"):
        ImageFolderListing(str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))


def test_non_ascii_names(tmp_path):
    root = make_folder(tmp_path / "train", {"café": 1})
    os.rename(os.path.join(root, "café", "img_0.jpg"), os.path.join(root, "café", "über.jpg"))
    listing = ImageFolderListing(root, cache_dir=str(tmp_path / "cache"))
    assert listing[0]["file_name"] == os.path.join(root, "café", "über.jpg")
    assert listing.relative_paths() == ["café/über.jpg"]


def test_damaged_cache_is_listed_again_and_rewritten(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "train", {"a": 2, "b": 2})
    cache = tmp_path / "cache"
    ImageFolderListing(root, cache_dir=str(cache))
    (cache_file,) = cache.iterdir()
    good = cache_file.read_bytes()
    with open(cache_file, "rb") as f:
        arrays = dict(np.load(f))
    other_layout = tmp_path / "other.npz"
    np.savez(other_layout, **{**arrays, "labels": arrays["labels"] + 5})  # classes out of range
    damaged = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x00not a zip file",
        "bad CRC": good.replace(arrays["paths"][0], arrays["paths"][0][::-1], 1),
        "other layout": other_layout.read_bytes(),
    }
    # A handler of its own: ssdet's logger does not propagate once a tool set it up.
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append
    logging.getLogger("ssdet.data.image_folder").addHandler(handler)
    for what, content in damaged.items():
        cache_file.write_bytes(content)
        listing = ImageFolderListing(root, cache_dir=str(cache))
        assert listing.relative_paths() == [
            "a/img_0.jpg",
            "a/img_1.jpg",
            "b/img_0.jpg",
            "b/img_1.jpg",
        ]
        assert listing.labels.tolist() == [0, 0, 1, 1], what
        with monkeypatch.context() as m:  # rewritten: the next listing reads it
            m.setattr(ImageFolderListing, "_list_files", None)
            assert len(ImageFolderListing(root, cache_dir=str(cache))) == 4, what
    logging.getLogger("ssdet.data.image_folder").removeHandler(handler)
    errors = [r.getMessage().split(" (")[1].split(":")[0] for r in warnings]
    assert errors == ["BadZipFile", "ValueError", "BadZipFile", "ValueError"]
