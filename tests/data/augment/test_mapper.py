"""The full train mapper with each policy on a small synthetic dataset."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.structures import BoxMode, Instances

from ssdet.config import add_ssdet_config
from ssdet.data.augment import PolicyDatasetMapper, build_augmentation_policy
from ssdet.utils.errors import InputError

OUTPUT_SIZE = (96, 128)


@pytest.fixture(scope="module")
def dataset_dicts(tmp_path_factory) -> list[dict]:
    """Three odd-sized JPEGs: several boxes (one crowd), one box at the border, no boxes."""
    root = tmp_path_factory.mktemp("augment_mapper")
    rng = np.random.RandomState(0)
    specs = [
        (
            (75, 101),
            [[5, 6, 30, 40, 0], [50, 10, 40, 50, 1], [20, 50, 60, 20, 2], [0, 0, 101, 75, 3]],
        ),
        ((63, 47), [[0, 0, 47, 3, 1]]),
        ((53, 37), []),
    ]
    dicts = []
    for index, ((height, width), boxes) in enumerate(specs):
        image = rng.randint(0, 256, (height, width, 3), dtype=np.uint8)
        file_name = str(root / f"{index}.jpg")
        cv2.imwrite(file_name, image)
        annotations = [
            {
                "bbox": box[:4],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": box[4],
                "iscrowd": int(box[4] == 3),
            }
            for box in boxes
        ]
        dicts.append(
            {
                "file_name": file_name,
                "image_id": index,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    return dicts


def _cfg(policy: str):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.SSDET.AUGMENT.POLICY = policy
    cfg.SSDET.AUGMENT.OUTPUT_SIZE = OUTPUT_SIZE
    # The synthetic images are ~100 px: scale the authors' pixel magnitudes (sized for ~640 px).
    cfg.SSDET.AUGMENT.PIXEL_MAGNITUDE_SCALE = 0.15
    return cfg


def _check_output(output: dict, expected_size: tuple[int, int] | None) -> None:
    image = output["image"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    height, width = image.shape[1:]
    if expected_size is not None:
        assert (height, width) == expected_size
    instances = output["instances"]
    assert isinstance(instances, Instances) and instances.image_size == (height, width)
    boxes = instances.gt_boxes.tensor
    assert len(boxes) == len(instances.gt_classes)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    # Degenerate boxes were dropped with their classes.
    assert ((boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)).all()
    assert set(instances.gt_classes.tolist()) <= {0, 1, 2}  # the crowd box never comes back


@pytest.mark.parametrize("policy", ["S1", "S2", "S3", "S4"])
def test_policy_mapper_yields_valid_instances(dataset_dicts, policy):
    mapper = PolicyDatasetMapper(_cfg(policy), is_train=True)
    for seed in range(15):
        np.random.seed(seed)
        for dataset_dict in dataset_dicts:
            _check_output(mapper(dataset_dict), OUTPUT_SIZE)
    assert len(mapper(dataset_dicts[2])["instances"]) == 0


def test_policy_mapper_d2_and_test_time(dataset_dicts):
    _check_output(PolicyDatasetMapper(_cfg("D2"), is_train=True)(dataset_dicts[0]), None)
    output = PolicyDatasetMapper(_cfg("S3"), is_train=False)(dataset_dicts[0])
    assert "instances" not in output and "annotations" not in output
    # Test time is Detectron2's ResizeShortestEdge(MIN_SIZE_TEST=800).
    assert min(output["image"].shape[1:]) == 800


@pytest.mark.parametrize("policy", ["S1", "S4"])
def test_detectron2_mapper_runs_policies_without_box_only_ops(dataset_dicts, policy):
    cfg = _cfg(policy)
    mapper = DatasetMapper(cfg, is_train=True, augmentations=build_augmentation_policy(cfg, True))
    for seed in range(5):
        np.random.seed(seed)
        for dataset_dict in dataset_dicts:
            _check_output(mapper(dataset_dict), OUTPUT_SIZE)


def test_detectron2_mapper_refuses_box_only_ops(dataset_dicts):
    cfg = _cfg("S2")
    mapper = DatasetMapper(cfg, is_train=True, augmentations=build_augmentation_policy(cfg, True))
    with pytest.raises(ValueError, match="PolicyDatasetMapper"):
        mapper(dataset_dicts[0])


def test_policy_mapper_is_reproducible(dataset_dicts):
    mapper = PolicyDatasetMapper(_cfg("S3"), is_train=True)
    outputs = []
    for _ in range(2):
        np.random.seed(7)
        outputs.append(mapper(dataset_dicts[0]))
    assert torch.equal(outputs[0]["image"], outputs[1]["image"])
    assert torch.equal(
        outputs[0]["instances"].gt_boxes.tensor, outputs[1]["instances"].gt_boxes.tensor
    )


def test_policy_mapper_refuses_input_crop_with_a_policy():
    cfg = _cfg("S1")
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(ValueError, match="INPUT.CROP"):
        PolicyDatasetMapper(cfg, is_train=True)


def test_boxes_leaving_the_crop_are_dropped_with_their_class(tmp_path):
    cv2.imwrite(str(tmp_path / "corners.png"), np.zeros((100, 100, 3), dtype=np.uint8))
    dataset_dict = {
        "file_name": str(tmp_path / "corners.png"),
        "height": 100,
        "width": 100,
        "annotations": [
            {"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [90, 90, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
        ],
    }
    cfg = _cfg("S1")
    cfg.SSDET.AUGMENT.OUTPUT_SIZE = (100, 100)
    # A 1.3x enlargement, then a 100 x 100 crop of the 130 x 130 image: the two objects are never
    # both inside, often neither is.
    cfg.SSDET.AUGMENT.SCALE_RANGE = (1.3, 1.3)
    cfg.SSDET.AUGMENT.FLIP_PROB = 0.0
    mapper = PolicyDatasetMapper(cfg, is_train=True)
    counts = set()
    for seed in range(60):
        np.random.seed(seed)
        instances = mapper(dataset_dict)["instances"]
        counts.add(len(instances))
        boxes, classes = instances.gt_boxes.tensor.tolist(), instances.gt_classes.tolist()
        for box, category in zip(boxes, classes, strict=True):
            # Each object can only show in its own corner of the crop.
            if category == 0:
                assert box[:2] == [0, 0]
            else:
                assert box[2:] == [100, 100]
    assert counts == {0, 1}


def test_kept_scores_follow_their_boxes_through_the_crop(tmp_path):
    cv2.imwrite(str(tmp_path / "scored.png"), np.zeros((100, 100, 3), dtype=np.uint8))
    boxes = [[0, 0, 10, 10], [45, 45, 10, 10], [90, 90, 10, 10]]
    dataset_dict = {
        "file_name": str(tmp_path / "scored.png"),
        "height": 100,
        "width": 100,
        "annotations": [
            {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": k, "score": 0.5 + 0.1 * k}
            for k, box in enumerate(boxes)
        ],
    }
    cfg = _cfg("S1")
    cfg.SSDET.AUGMENT.OUTPUT_SIZE = (100, 100)
    cfg.SSDET.AUGMENT.SCALE_RANGE = (1.3, 1.3)  # the crop drops a corner box, often both
    mapper = PolicyDatasetMapper(cfg, is_train=True, keep_scores=True)
    counts = set()
    for seed in range(20):
        np.random.seed(seed)
        instances = mapper(dataset_dict)["instances"]
        counts.add(len(instances))
        expected = [0.5 + 0.1 * c for c in instances.gt_classes.tolist()]
        assert instances.gt_scores.tolist() == pytest.approx(expected)
        assert instances.gt_scores.dtype == torch.float32
    assert 1 in counts and 2 in counts
    # Without keep_scores, Detectron2's own transform: no scores.
    np.random.seed(0)
    assert not PolicyDatasetMapper(cfg, is_train=True)(dataset_dict)["instances"].has("gt_scores")


def test_a_crop_before_a_cropping_policy_is_an_input_error():
    cfg = _cfg("S1")
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(InputError, match="INPUT.CROP.ENABLED adds a crop before policy S1"):
        PolicyDatasetMapper(cfg, is_train=True)
