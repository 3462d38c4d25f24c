"""tools/visualize_augment.py on a COCO-format file it is given directly."""

import importlib.util
import json
import os
import sys

import cv2
import numpy as np
import pytest

from ssdet.data.augment import AUTOAUGMENT_POLICIES, RANDAUGMENT_OPS

from ..conftest import REPO


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
    tool = _load_tool()
    tool.main()
    grid = cv2.imread(str(output))
    # 3 columns (original, S1, S2) of 80 px; a caption, column titles, then 2 rows of 60-px cells,
    # each over a band naming the cells' ops.
    assert grid.shape[1] == 3 * 80 and grid.shape[0] > 2 * 60

    # Each mapped cell names the ops it drew: the sub-policy's, with magnitudes, and the flip.
    cfg = tool.load_cfg(None, argv[argv.index("SSDET.AUGMENT.OUTPUT_SIZE") :], optional=True)
    dataset_dict = tool.load_coco_json(str(coco_json), str(tmp_path), "visualize_augment_test")[0]
    for policy, names in (
        ("S2", {name for sub in AUTOAUGMENT_POLICIES["v0"] for name, _, _ in sub}),
        ("S4", set(RANDAUGMENT_OPS)),
    ):
        mapper = tool.build_mapper(cfg, policy)
        np.random.seed(0)
        cell = tool.mapped_cell(mapper, dataset_dict, "BGR")
        policy_text, geometry_text = cell.op_text()
        drawn = [run.split(" M")[0] for run in policy_text.split(": ", 1)[1].split(", ")]
        assert drawn and set(drawn) <= names, policy_text
        assert " M" in policy_text and "flip" in geometry_text and "scale x" in geometry_text
        assert cell.image.shape == (64, 64, 3) and len(cell.boxes) == len(cell.classes)


def test_visualize_augment_sizes_labels_to_the_cell():
    tool = _load_tool()
    assert tool.font_scale(640, tool._OPS_SCALE) == 2 * tool.font_scale(320, tool._OPS_SCALE)
    # A class keeps its color; different classes get different ones.
    assert tool.class_color(3) == tool.class_color(3) != tool.class_color(4)
    image = np.zeros((32, 32, 3), np.uint8)
    cell = tool.render_cell(image, np.array([[4.0, 4, 20, 20]]), [0], ["thing"], 320, 427)
    assert cell.shape == (320, 427, 3)
    assert (cell == np.array(tool.class_color(0), np.uint8)).all(axis=2).any()


def test_hostile_or_broken_config_is_one_error_line(tmp_path, monkeypatch):
    tool = _load_tool()
    marker = tmp_path / "ran"
    configs = {
        "evil.yaml": f'!!python/object/apply:os.system ["touch {marker}"]\n',
        "broken.yaml": "SSDET:\n  AUGMENT: [1, 2\n",
    }
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
        argv = ["visualize_augment.py", "--config", str(tmp_path / name), "--dataset", "x"]
        monkeypatch.setattr(sys, "argv", argv + ["--output", str(tmp_path / "g.png")])
        with pytest.raises(SystemExit) as exit_info:
            tool.main()
        assert str(exit_info.value).startswith("error: "), exit_info.value
        assert name in str(exit_info.value)
    assert not marker.exists(), "the config ran code"
