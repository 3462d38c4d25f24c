"""Tests of COCO JSON export and import."""

import json

import numpy as np
import pytest

from ssdet.data.pseudo_labels import (
    PseudoLabelFilter,
    export_coco_annotations,
    export_coco_results,
    import_coco_json,
    merge_shards,
)
from ssdet.utils.errors import InputError

from .conftest import CLASSES, make_provenance, random_detections, write_shards


def test_coco_round_trip(tmp_path):
    images = random_detections(12, seed=3)
    store = merge_shards(
        write_shards(tmp_path, images, [range(12)], "coco"), tmp_path / "s", make_provenance()
    )
    everything = PseudoLabelFilter.keep_all().apply(store)
    category_ids = [1, 3, 18]

    export_coco_annotations(everything, tmp_path / "ann.json", category_ids)
    export_coco_results(everything, tmp_path / "res.json", category_ids)
    from_ann = import_coco_json(tmp_path / "ann.json", tmp_path / "from_ann")
    from_res = import_coco_json(
        tmp_path / "res.json", tmp_path / "from_res", image_list_json=tmp_path / "ann.json"
    )
    for imported in (from_ann, from_res):
        assert imported.class_names == CLASSES
        for column in ("image_offsets", "image_ids", "heights", "widths", "boxes", "scores"):
            np.testing.assert_array_equal(getattr(imported, column), getattr(store, column))
        np.testing.assert_array_equal(imported.classes, store.classes)
        assert [imported.file_name(i) for i in range(store.num_images)] == [
            store.file_name(i) for i in range(store.num_images)
        ]

    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "ann.json"))
    results = coco.loadRes(str(tmp_path / "res.json"))
    assert len(results.getAnnIds()) == store.num_boxes
    with open(tmp_path / "ann.json") as f:
        assert all("score" in a for a in json.load(f)["annotations"])


def test_coco_import_maps_categories_by_name(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "x.jpg", "height": 5, "width": 5}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [1, 1, 2, 2], "score": 0.8},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    store = import_coco_json(tmp_path / "ann.json", tmp_path / "s", class_names=CLASSES)
    assert store.class_names == CLASSES
    np.testing.assert_array_equal(store.classes, [0, 2])  # person (0.8) first, then dog
    np.testing.assert_array_equal(store.boxes, [[1, 1, 3, 3], [0, 0, 2, 2]])
    with pytest.raises(InputError, match="image_list_json"):
        (tmp_path / "res.json").write_text("[]")
        import_coco_json(tmp_path / "res.json", tmp_path / "r")
