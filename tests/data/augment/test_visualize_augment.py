"""tools/visualize_augment.py on a COCO-format file it is given directly."""

import importlib.util
import json
import os
import sys

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _load_tool():
    path = os.path.join(REPO, "tools", "visualize_augment.py")
    spec = importlib.util.spec_from_file_location("visualize_augment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visualize_augment_writes_a_grid(tmp_path, monkeypatch):
    rng = np.random.RandomState(0)
    images, annotations = [], []
    for index, (height, width) in enumerate([(75, 101), (63, 47)]):
        cv2.imwrite(
            str(tmp_path / f"{index}.jpg"), rng.randint(0, 256, (height, width, 3), np.uint8)
        )
        images.append(
            {"id": index + 1, "file_name": f"{index}.jpg", "height": height, "width": width}
        )
        annotations.append(
            {
                "id": index + 1,
                "image_id": index + 1,
                "bbox": [5, 6, 30, 40],
                "area": 1200.0,
                "iscrowd": 0,
                "category_id": 7,
            }
        )
    coco_json = tmp_path / "instances.json"
    coco_json.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 7, "name": "thing"}],
            }
        )
    )
    output = tmp_path / "grid.png"
    argv = [
        "visualize_augment.py",
        "--coco-json",
        str(coco_json),
        "--image-root",
        str(tmp_path),
        "--policies",
        "S1",
        "S2",
        "--num-images",
        "2",
        "--output",
        str(output),
        "--cell-height",
        "60",
        "SSDET.AUGMENT.OUTPUT_SIZE",
        "(64, 64)",
        "SSDET.AUGMENT.PIXEL_MAGNITUDE_SCALE",
        "0.1",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    _load_tool().main()
    grid = cv2.imread(str(output))
    # A header row, then 2 image rows of 60-px cells; 3 columns (original, S1, S2) of 80 px.
    assert grid.shape == (28 + 2 * 60, 3 * 80, 3)
