"""Tests of the pseudo-label report: statistics, JSON, plot, summary."""

import json
import os

import numpy as np
import pytest

from ssdet.data.pseudo_labels import (
    LabelingProvenance,
    PseudoLabelFilter,
    PseudoLabelShardWriter,
    merge_shards,
)
from ssdet.data.pseudo_report import build_report, write_report

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
    assert os.path.getsize(tmp_path / "report.png") > 1000
    summary = report.summary()
    assert "kept 4 of 7" in summary and "1 without" in summary and "WARNING" not in summary


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
