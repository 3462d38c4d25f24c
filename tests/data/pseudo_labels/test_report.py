"""Tests of the pseudo-label report: statistics, JSON, plot, summary, ground truth."""

import dataclasses
import json
import os

import numpy as np
import pytest
from detectron2.data import MetadataCatalog

from ssdet.data import register_image_folder
from ssdet.data.ground_truth import find_ground_truth, load_ground_truth
from ssdet.data.pseudo_labels import (
    LabelingProvenance,
    PseudoLabelFilter,
    PseudoLabelShardWriter,
    merge_shards,
)
from ssdet.data.pseudo_labels.report import build_report, report_figure, write_report
from ssdet.utils.errors import InputError

CLASSES = ["person", "car", "dog"]


@pytest.fixture
def store(tmp_path):
    # (boxes XYXY, scores, classes) per image; image 2 keeps nothing at the default 0.5.
    images = [
        ([[0, 0, 10, 10], [0, 0, 2, 2], [0, 0, 8, 8]], [0.9, 0.6, 0.4], [0, 1, 2]),
        ([[0, 0, 9, 9], [0, 0, 9, 9], [1, 1, 9, 9]], [0.55, 0.5, 0.45], [2, 2, 0]),
        ([[0, 0, 9, 9]], [0.2], [1]),
    ]
    writer = PseudoLabelShardWriter(tmp_path / "shard.npz", len(CLASSES), score_floor=0.0)
    for index, (boxes, scores, classes) in enumerate(images):
        writer.add(index, f"{index}.jpg", 100, 100, np.array(boxes), scores, classes)
    writer.add_failure(3, "3.jpg", "unreadable")
    return merge_shards([writer.write()], tmp_path / "store", LabelingProvenance(CLASSES))


def test_report_content(tmp_path, store):
    report = build_report(PseudoLabelFilter().apply(store))
    write_report(report, tmp_path / "report.json", tmp_path / "report.png")
    with open(tmp_path / "report.json") as f:
        content = json.load(f)
    assert content["num_images"] == 3 and content["num_failed_images"] == 1
    assert content["num_stored_boxes"] == 7 and content["num_kept_boxes"] == 4
    assert content["num_images_with_boxes"] == 2 and content["num_images_without_boxes"] == 1
    assert content["fraction_without_boxes"] == pytest.approx(1 / 3)
    assert content["dataset_size"] == 2
    assert content["boxes_per_image"] == {"mean": pytest.approx(4 / 3), "median": 2.0, "max": 2.0}
    histogram = content["boxes_per_image_histogram"]
    assert histogram["counts"][:3] == [1, 0, 2] and histogram["bins"][-1] == "20+"
    assert content["class_box_counts"] == {"person": 1, "car": 1, "dog": 2}
    assert content["class_image_counts"] == {"person": 1, "car": 0, "dog": 1}
    assert sum(content["score_histogram"]["stored"]) == 7
    assert sum(content["score_histogram"]["kept"]) == 4
    assert content["filter"]["score_thresh"] == 0.5
    assert content["almost_empty"] is False
    assert content["ground_truth"] is None
    assert os.path.getsize(tmp_path / "report.png") > 1000
    summary = report.summary()
    assert "kept 4 of 7" in summary and "1 without" in summary and "WARNING" not in summary
    assert "ground truth" not in summary


def test_report_figure_fits_the_class_names(store):
    report = build_report(PseudoLabelFilter().apply(store))
    small = report_figure(report)
    names = [f"class_{k}" for k in range(80)]
    many = report_figure(
        dataclasses.replace(
            report,
            class_box_counts=dict.fromkeys(names, 1),
            class_image_counts=dict.fromkeys(names, 1),
        )
    )
    # Wider for more classes; every class named, rotated, at a readable size.
    assert many.get_size_inches()[0] > small.get_size_inches()[0]
    for fig, count in ((small, len(CLASSES)), (many, len(names))):
        class_axes = fig.axes[2:]
        assert len(class_axes) == 2
        for ax in class_axes:
            labels = ax.get_xticklabels()
            assert len(labels) == count
            assert all(label.get_rotation() == 90 and label.get_fontsize() >= 9 for label in labels)
    many.canvas.draw()
    extents = [label.get_window_extent() for label in many.axes[2].get_xticklabels()]
    assert all(left.x1 <= right.x0 for left, right in zip(extents[:-1], extents[1:], strict=True))


def test_report_counts_balanced_dataset(store):
    report = build_report(PseudoLabelFilter(balance_classes=True, images_per_class=3).apply(store))
    assert report.dataset_size == 6
    assert report.class_image_counts == {"person": 3, "car": 0, "dog": 3}


def test_report_flags_almost_empty(tmp_path, store):
    report = build_report(PseudoLabelFilter(score_thresh=0.99).apply(store))
    assert report.almost_empty and report.num_kept_boxes == 0
    assert "WARNING: almost no pseudo boxes" in report.summary()
    write_report(report, tmp_path / "empty.json", None)
    assert json.loads((tmp_path / "empty.json").read_text())["almost_empty"] is True


# The teacher's classes; "clover" is a class of the ground truth that the teacher does not know.
TEACHER_CLASSES = ["person", "car", "dog", "cat"]
GT_CATEGORIES = {"person": 1, "car": 2, "dog": 3, "clover": 7}


def _write_ground_truth(path, images) -> str:
    """Write ``images`` ({file name: [(class name, XYXY box), ...]}) as COCO instances."""
    coco = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": i, "name": n} for n, i in GT_CATEGORIES.items()]
    for image_id, (file_name, objects) in enumerate(images.items(), start=10):
        coco["images"].append({"id": image_id, "file_name": file_name, "height": 100, "width": 100})
        for name, (x1, y1, x2, y2) in objects:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": GT_CATEGORIES[name],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    path.write_text(json.dumps(coco))
    return str(path)


@pytest.fixture
def labeled_world(tmp_path):
    """A store and its ground truth, with known precision and recall at the filter's 0.5.

    On the 4 images that have ground truth the filter keeps 7 boxes, 2 of them true positives;
    the ground truth has 5 objects of the teacher's classes and 1 of a novel class.
    """
    person, car, dog = (TEACHER_CLASSES.index(n) for n in ("person", "car", "dog"))
    # file name -> (ground-truth objects or None, detections (XYXY, score, class)).
    world = {
        "a/0.jpg": (
            [("person", (0, 0, 10, 10)), ("car", (20, 20, 40, 40)), ("clover", (50, 50, 70, 70))],
            [
                ((0, 0, 10, 10), 0.9, person),  # exact match: true positive, the top box
                ((0, 0, 10, 10), 0.8, person),  # duplicate of a matched box: false positive
                ((20, 20, 40, 40), 0.7, dog),  # the car's place, wrong class: false positive
                ((50, 50, 70, 70), 0.6, car),  # on the novel object: false positive
                ((20, 20, 40, 40), 0.3, car),  # right, but below the filter: the car is missed
            ],
        ),
        "a/1.jpg": (
            [("dog", (10, 10, 50, 50))],
            [
                ((12, 12, 50, 50), 0.95, dog),  # IoU 0.9025: true positive
                ((0, 0, 10, 10), 0.55, car),  # on nothing: false positive
            ],
        ),
        # IoU 1/3 with the person: its top box is wrong.
        "b/2.jpg": ([("person", (0, 0, 20, 20))], [((10, 0, 30, 20), 0.9, person)]),
        # No kept box: the car is missed, the image is wrong.
        "b/3.jpg": ([("car", (0, 0, 30, 30))], [((0, 0, 30, 30), 0.2, car)]),
        # Not in the ground truth: its box counts in the report but not against the ground truth.
        "c/4.jpg": (None, [((0, 0, 10, 10), 0.9, person)]),
    }
    writer = PseudoLabelShardWriter(tmp_path / "shard.npz", len(TEACHER_CLASSES), score_floor=0.0)
    for index, (file_name, (_, dets)) in enumerate(world.items()):
        boxes, scores, classes = zip(*dets, strict=True)
        writer.add(index, file_name, 100, 100, np.array(boxes), scores, classes)
    # A failed image is not in the store: its ground truth does not count.
    writer.add_failure(len(world), "z/9.jpg", "unreadable")
    image_root = tmp_path / "images"
    image_root.mkdir()
    store = merge_shards(
        [writer.write()],
        tmp_path / "store",
        LabelingProvenance(TEACHER_CLASSES, image_root=str(image_root)),
    )
    truth = {name: objects for name, (objects, _) in world.items() if objects is not None}
    truth["z/9.jpg"] = [("dog", (0, 0, 10, 10))]
    return store, _write_ground_truth(tmp_path / "instances_val.json", truth)


def test_ground_truth_reader(labeled_world):
    _, json_file = labeled_world
    truth = load_ground_truth(json_file)
    assert sorted(truth) == ["a/0.jpg", "a/1.jpg", "b/2.jpg", "b/3.jpg", "z/9.jpg"]
    boxes, names = truth["a/0.jpg"]
    assert names == ["person", "car", "clover"]
    np.testing.assert_array_equal(boxes, [[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 70, 70]])
    assert boxes.dtype == np.float64


def test_report_against_ground_truth(tmp_path, labeled_world):
    store, json_file = labeled_world
    report = build_report(PseudoLabelFilter().apply(store), ground_truth=json_file)
    assert report.num_kept_boxes == 8
    gt = report.ground_truth
    assert gt["file"] == json_file and gt["iou_threshold"] == 0.5
    assert gt["num_images"] == 4 and gt["num_kept_boxes"] == 7
    # The clover is not among the 5 objects that recall counts: no pseudo box can match it.
    assert gt["num_gt_boxes"] == 5 and gt["num_novel_gt_boxes"] == 1
    assert gt["true_positives"] == 2
    assert gt["precision"] == pytest.approx(2 / 7) and gt["recall"] == pytest.approx(2 / 5)
    assert gt["image_accuracy"] == pytest.approx(2 / 4)
    assert gt["per_class"] == {
        "person": {
            "kept": 3,
            "gt": 2,
            "true_positives": 1,
            "precision": pytest.approx(1 / 3),
            "recall": 0.5,
        },
        "car": {"kept": 2, "gt": 2, "true_positives": 0, "precision": 0.0, "recall": 0.0},
        "dog": {"kept": 2, "gt": 1, "true_positives": 1, "precision": 0.5, "recall": 1.0},
        "cat": {"kept": 0, "gt": 0, "true_positives": 0, "precision": None, "recall": None},
    }
    # One of each kind (see the fixture); the dog on the car is not on a found object.
    assert gt["false_positives"] == {
        "duplicate": 1,
        "wrong_class": 1,
        "wrong_class_on_found_object": 0,
        "novel_class": 1,
        "localization": 1,
        "background": 1,
    }
    assert (
        "ground truth: precision 28.6%, recall 40.0%, image accuracy 50.0% at IoU 0.5 on 4 images; "
        "objects of classes the teacher does not know, not counted: 1" in report.summary()
    )
    assert (
        "false positives, % of kept boxes: duplicate 14.3%, wrong class 14.3% (0.0% on objects "
        "found in their class), novel class 14.3%, localization 14.3%, background 14.3%"
        in report.summary()
    )
    write_report(report, tmp_path / "report.json", tmp_path / "report.png")
    content = json.loads((tmp_path / "report.json").read_text())
    assert content["ground_truth"]["per_class"]["cat"]["precision"] is None
    assert content["ground_truth"]["recall"] == pytest.approx(0.4)

    # At 0.85 only the top boxes are kept: the duplicate, the wrong class, the box on the clover
    # and the one on nothing are gone.
    strict = build_report(PseudoLabelFilter(score_thresh=0.85).apply(store), json_file)
    assert strict.ground_truth["num_kept_boxes"] == 3
    assert strict.ground_truth["precision"] == pytest.approx(2 / 3)
    assert strict.ground_truth["recall"] == pytest.approx(2 / 5)

    assert build_report(PseudoLabelFilter().apply(store)).ground_truth is None


def test_wrong_class_on_an_object_found_in_its_class(tmp_path):
    # One person found (0.9), then a car box on the same person (0.7) and one shifted off it
    # (0.6, IoU 1/3: a localization error).
    person, car = TEACHER_CLASSES.index("person"), TEACHER_CLASSES.index("car")
    writer = PseudoLabelShardWriter(tmp_path / "shard.npz", len(TEACHER_CLASSES), score_floor=0.0)
    boxes = np.array([[0, 0, 20, 20], [1, 1, 20, 20], [10, 0, 30, 20]], dtype=np.float64)
    writer.add(0, "a/0.jpg", 100, 100, boxes, (0.9, 0.7, 0.6), (person, car, person))
    (tmp_path / "images").mkdir()
    store = merge_shards(
        [writer.write()],
        tmp_path / "store",
        LabelingProvenance(TEACHER_CLASSES, image_root=str(tmp_path / "images")),
    )
    json_file = _write_ground_truth(tmp_path / "gt.json", {"a/0.jpg": [("person", (0, 0, 20, 20))]})
    gt = build_report(PseudoLabelFilter().apply(store), json_file).ground_truth
    assert gt["true_positives"] == 1
    fp = gt["false_positives"]
    assert (fp["wrong_class"], fp["wrong_class_on_found_object"], fp["localization"]) == (1, 1, 1)
    assert fp["duplicate"] == fp["novel_class"] == fp["background"] == 0


def test_unreadable_ground_truth_names_the_file(tmp_path, labeled_world):
    store, _ = labeled_world
    selection = PseudoLabelFilter().apply(store)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(InputError, match="broken.json.*cannot be read as JSON"):
        build_report(selection, ground_truth=broken)
    broken.write_text(json.dumps({"images": [{"id": 1, "file_name": "a/0.jpg"}]}))
    with pytest.raises(InputError, match="broken.json.*not a COCO instances file"):
        build_report(selection, ground_truth=broken)


def test_find_ground_truth_of_registered_folder(tmp_path, labeled_world):
    store, json_file = labeled_world
    assert find_ground_truth(store) is None  # no dataset of this folder is registered yet
    register_image_folder("t_gt_folder", store.image_root, ground_truth_json=json_file)
    assert find_ground_truth(store) == json_file

    other = merge_shards(
        [PseudoLabelShardWriter(tmp_path / "other.npz", len(TEACHER_CLASSES)).write()],
        tmp_path / "other",
        LabelingProvenance(TEACHER_CLASSES, image_root=str(tmp_path / "other_images")),
    )
    register_image_folder(
        "t_gt_missing", str(tmp_path / "other_images"), str(tmp_path / "missing.json")
    )
    assert find_ground_truth(other) is None

    root = os.environ["DETECTRON2_DATASETS"]
    assert MetadataCatalog.get("mini_imagenet_val").ground_truth_json == os.path.join(
        root, "mini_imagenet", "annotations", "instances_val.json"
    )
    assert MetadataCatalog.get("imagenet_val").get("ground_truth_json") is None
