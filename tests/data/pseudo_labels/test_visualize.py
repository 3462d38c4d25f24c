"""Drawing an image's pseudo labels: kept, dropped and ignored boxes, ground truth, the tool."""

import importlib.util
import os
import runpy
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ssdet.data.ground_truth import find_ground_truth, load_ground_truth
from ssdet.data.pseudo_labels import PseudoLabelFilter, PseudoLabelStore
from ssdet.data.pseudo_labels.visualize import (
    DROPPED,
    IGNORED,
    KEPT,
    draw_pseudo_labels,
    find_image,
    image_pseudo_labels,
    visualize_pseudo_labels,
)
from ssdet.utils.errors import InputError

from ...conftest import REPO
from .conftest import CLASSES, write_store

TOOL = os.path.join(REPO, "tools", "visualize_pseudo_labels.py")


def test_boxes_are_sorted_as_the_filter_sorts_them(filter_store):
    # Image 0: person 0.9 (10x10), car 0.6 (2x2 px), dog 0.4; image 2: only a 0.2 box.
    pseudo_filter = PseudoLabelFilter(score_thresh=0.5, min_box_size=3, ignore_score_thresh=0.3)
    selection = pseudo_filter.apply(filter_store)
    labels = image_pseudo_labels(selection, 0)
    # The small car is not kept but scores above the ignore threshold: an ignore region.
    assert labels.status.tolist() == [KEPT, IGNORED, IGNORED]
    assert labels.scores.tolist() == pytest.approx([0.9, 0.6, 0.4])
    assert labels.classes.tolist() == [0, 1, 2]
    assert labels.times_in_dataset == 1 and labels.ground_truth is None
    empty = image_pseudo_labels(selection, 2)
    assert empty.status.tolist() == [DROPPED] and empty.times_in_dataset == 0


def test_class_balancing_duplicates_are_counted(balance_store):
    # The dog image is the only one of its class: balanced to the mean of 3 images per class.
    selection = PseudoLabelFilter(balance_classes=True).apply(balance_store)
    dog = find_image(balance_store, "d.jpg")
    assert image_pseudo_labels(selection, dog).times_in_dataset == 3


def test_images_are_found_by_id_or_file_name(filter_store):
    assert find_image(filter_store, "1") == 1
    assert find_image(filter_store, "2.jpg") == 2
    with pytest.raises(InputError, match=r"No image '7\.jpg'.*3 images.*close file names: "):
        find_image(filter_store, "7.jpg")
    with pytest.raises(InputError, match="No image '99'"):
        find_image(filter_store, "99")


def colored_pixels(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(np.count_nonzero(np.abs(image.astype(int) - rgb).max(axis=2) < 40))


@pytest.fixture(scope="module")
def world_store(tiny_world, tmp_path_factory):
    """A store over the first tiny mini-ImageNet images, by their folder-relative names (as the
    teacher stores them), so that the dataset's ground truth applies."""
    root = MetadataCatalog.get("mini_imagenet_train").image_root
    listing = DatasetCatalog.get("mini_imagenet_train")
    images = [
        (
            os.path.relpath(listing[i]["file_name"], root),
            0,
            0,
            [(8, 8, 40, 40, 0.9, 0), (2, 2, 12, 12, 0.3, 1)],
        )
        for i in range(3)
    ]
    return write_store(tmp_path_factory.mktemp("vis"), images, image_root=root).path


def test_drawing_shows_kept_and_dropped_boxes_and_the_ground_truth(world_store):
    store = PseudoLabelStore.open(world_store)
    json_file = find_ground_truth(store)
    assert json_file == MetadataCatalog.get("mini_imagenet_train").ground_truth_json
    pseudo_filter = PseudoLabelFilter()
    selection = pseudo_filter.apply(store)
    labels = image_pseudo_labels(selection, 0, load_ground_truth(json_file))
    assert labels.status.tolist() == [KEPT, DROPPED]
    assert labels.ground_truth is not None and len(labels.ground_truth.class_names) >= 1
    image = cv2.imread(labels.file_name)[:, :, ::-1]
    drawn = draw_pseudo_labels(image, labels, CLASSES, pseudo_filter, size=320)
    height, width = image.shape[:2]
    # Resized to 320 px on its longer side, below a header of two lines.
    assert drawn.shape[1] == round(width * 320 / max(height, width)) and drawn.shape[0] > 320
    lime, red, blue = (0, 255, 0), (255, 0, 0), (0, 191, 255)
    assert colored_pixels(drawn, lime) > 100 and colored_pixels(drawn, red) > 50
    assert colored_pixels(drawn, blue) > 50
    labels.ground_truth = None
    without = draw_pseudo_labels(image, labels, CLASSES, pseudo_filter, size=320)
    assert colored_pixels(without, blue) == 0


def load_tool():
    """tools/visualize_pseudo_labels.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("visualize_pseudo_labels", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_writes_one_png_per_image(world_store, tmp_path, capsys):
    tool = load_tool()
    store = PseudoLabelStore.open(world_store)
    name = store.stored_file_name(2)
    args = ["--store", world_store, "--image", name, "--num-images", "1", "--output"]
    tool.main(tool.parse_args([*args, str(tmp_path), "SSDET.PSEUDO_LABELS.SCORE_THRESH", "0.2"]))
    ids = [int(store.image_ids[2]), int(store.image_ids[0])]
    assert capsys.readouterr().out.split() == [
        word for i in ids for word in ("wrote", str(tmp_path / f"{i}.png"))
    ]
    assert cv2.imread(str(tmp_path / f"{ids[0]}.png")).shape[1] == 640
    assert visualize_pseudo_labels(world_store, tmp_path / "none", PseudoLabelFilter()) == []


def test_tool_reports_a_missing_store_as_one_error_line(tmp_path, monkeypatch):
    argv = [TOOL, "--store", str(tmp_path / "nowhere"), "--image", "3", "--output", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    # As `python tools/visualize_pseudo_labels.py ...`: sys.exit(message) prints the message on
    # stderr and exits with status 1.
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(TOOL, run_name="__main__")
    message = exit_info.value.code
    assert isinstance(message, str) and len(message.splitlines()) == 1
    assert message.startswith("error: Pseudo-label store") and "nowhere" in message


def test_world_images_are_found_by_path(world_store):
    store = PseudoLabelStore.open(world_store)
    assert find_image(store, store.file_name(1)) == 1
    assert find_image(store, os.path.basename(store.stored_file_name(2))) == 2
