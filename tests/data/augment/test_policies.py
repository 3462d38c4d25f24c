"""The named policies S1..S4 and the AutoAugment / RandAugment policies behind them."""

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import detection_utils
from detectron2.data import transforms as T

from ssdet.config import add_ssdet_config
from ssdet.data.augment import (
    AUTOAUGMENT_POLICIES,
    POLICY_NAMES,
    RANDAUGMENT_OPS,
    AutoAugment,
    BoxesOnly,
    RandAugment,
    Rotate,
    ScaleJitterCrop,
    Translate,
    build_augmentation_policy,
    build_policy,
)
from ssdet.data.augment.autoaugment import MAX_LEVEL, build_op


def _cfg(**augment):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    for key, value in augment.items():
        setattr(cfg.SSDET.AUGMENT, key, value)
    return cfg


def test_policy_v0_is_the_papers():
    assert AUTOAUGMENT_POLICIES["v0"] == (
        (("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)),
        (("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)),
        (("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)),
        (("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)),
        (("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)),
    )


@pytest.mark.parametrize(
    "version, num_sub_policies, ops_per_sub_policy",
    # v2 has one two-op sub-policy among its three-op ones, as the authors wrote it.
    [("v0", 5, {2}), ("v1", 20, {2}), ("v2", 15, {2, 3}), ("v3", 15, {2})],
)
def test_policy_shapes_and_ranges(version, num_sub_policies, ops_per_sub_policy):
    policy = AUTOAUGMENT_POLICIES[version]
    assert len(policy) == num_sub_policies
    for sub_policy in policy:
        assert len(sub_policy) in ops_per_sub_policy
        for name, prob, level in sub_policy:
            assert 0.0 <= prob <= 1.0 and 0 <= level <= MAX_LEVEL
            build_op(name, prob, level)


def test_level_to_argument_mapping_is_the_authors():
    assert build_op("Rotate_BBox", 0.6, 10)[0].degrees == 30.0
    assert build_op("ShearX_BBox", 0.4, 5)[0].factor == pytest.approx(0.15)
    assert build_op("TranslateX_BBox", 0.6, 4)[0].pixels == 100
    assert build_op("Cutout", 0.8, 8)[0].pad_size == 80
    assert build_op("BBox_Cutout", 1.0, 4)[0].pad_fraction == pytest.approx(0.3)
    assert build_op("Posterize", 0.8, 2)[0].kwargs == {"bits": 0}
    assert build_op("Solarize", 0.8, 8)[0].kwargs == {"threshold": 204}
    assert build_op("SolarizeAdd", 0.8, 6)[0].kwargs == {"addition": 66}
    assert build_op("Color", 1.0, 6)[0].kwargs["factor"] == pytest.approx(1.18)
    box_only, prob = build_op("TranslateY_Only_BBoxes", 0.6, 6)
    assert isinstance(box_only, BoxesOnly) and prob == 1.0
    assert box_only.prob == pytest.approx(0.2) and box_only.op.pixels == 72
    assert isinstance(build_op("Rotate_Only_BBoxes", 0.3, 5)[0].op, Rotate)
    with pytest.raises(ValueError, match="Unknown AutoAugment op"):
        build_op("Invert", 0.5, 5)


def test_pixel_scale_scales_pixel_magnitudes_only():
    policy = AutoAugment("v0", pixel_scale=0.25)
    translate = policy.sub_policies[0][0][0]
    assert isinstance(translate, Translate) and translate.pixels == 25
    assert policy.sub_policies[4][0][0].degrees == 30.0


def test_autoaugment_needs_boxes_and_known_versions():
    image = np.zeros((37, 53, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="PolicyDatasetMapper"):
        AutoAugment("v0")(T.AugInput(image))
    with pytest.raises(ValueError, match="Unknown AutoAugment policy"):
        AutoAugment("v4")
    with pytest.raises(ValueError, match="image formats"):
        AutoAugment("v0", image_format="YUV-BT.601")


def test_randaugment_draws_num_ops_and_runs_without_boxes():
    image = np.random.RandomState(0).randint(0, 256, (37, 53, 3), dtype=np.uint8)
    augmentation = RandAugment(num_ops=3, magnitude=10)
    for seed in range(10):
        np.random.seed(seed)
        transform = augmentation(T.AugInput(image.copy()))
        assert len(transform.transforms) == 3
    with pytest.raises(ValueError, match="box-only"):
        RandAugment(ops=("Rotate_Only_BBoxes",))
    assert RandAugment(num_ops=0)(T.AugInput(image)).apply_image(image) is image


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_build_policy(name):
    augmentations = build_policy(name)
    assert all(isinstance(a, T.Augmentation) for a in augmentations)
    if name == "D2":
        assert isinstance(augmentations[0], T.ResizeShortestEdge)
        return
    assert isinstance(augmentations[-1], ScaleJitterCrop)
    assert isinstance(augmentations[-2], T.RandomFlip)
    expected_first = {"S1": T.RandomFlip, "S2": AutoAugment, "S3": AutoAugment, "S4": RandAugment}
    assert isinstance(augmentations[0], expected_first[name])
    if name == "S4":
        assert augmentations[0].ops == RANDAUGMENT_OPS
        assert (augmentations[0].num_ops, augmentations[0].magnitude) == (2, 10)
    if name in ("S2", "S3"):
        assert augmentations[0].version == "v0"
    expected_range = (0.8, 1.2) if name in ("S1", "S2") else (0.5, 2.0)
    assert augmentations[-1].scale_range == expected_range


def test_unknown_policy_names_the_valid_ones():
    with pytest.raises(
        ValueError, match="Unknown augmentation policy 'S5'; valid policies: D2, S1"
    ):
        build_policy("S5")
    with pytest.raises(ValueError, match="Unknown augmentation policy"):
        build_augmentation_policy(_cfg(POLICY="s1"), is_train=False)


def test_config_overrides():
    cfg = _cfg(
        POLICY="S4",
        OUTPUT_SIZE=(320, 480),
        SCALE_RANGE=(0.9, 1.1),
        FLIP_PROB=0.0,
        RANDAUGMENT_NUM_OPS=3,
        RANDAUGMENT_MAGNITUDE=5,
        RANDAUGMENT_OPS=("Equalize", "BBox_Cutout"),
        FILL_VALUE=0,
        PIXEL_MAGNITUDE_SCALE=0.5,
    )
    cfg.INPUT.FORMAT = "RGB"
    randaugment, crop = build_augmentation_policy(cfg, is_train=True)  # no flip at FLIP_PROB 0
    assert (randaugment.num_ops, randaugment.magnitude, randaugment.fill) == (3, 5, 0)
    assert (randaugment.image_format, randaugment.pixel_scale) == ("RGB", 0.5)
    assert randaugment.ops == ("Equalize", "BBox_Cutout")
    assert (crop.output_size, crop.scale_range, crop.pad_value) == ((320, 480), (0.9, 1.1), 0)

    autoaugment = build_augmentation_policy(
        _cfg(POLICY="S3", AUTOAUGMENT_VERSION="v2"), is_train=True
    )[0]
    assert autoaugment.version == "v2"
    assert len(autoaugment.sub_policies[0]) == 3


def test_d2_and_test_time_are_detectron2s():
    cfg = _cfg(POLICY="D2")
    assert repr(build_augmentation_policy(cfg, True)) == repr(
        detection_utils.build_augmentation(cfg, True)
    )
    for name in POLICY_NAMES:
        cfg = _cfg(POLICY=name)
        cfg.INPUT.MIN_SIZE_TEST = 640
        (resize,) = build_augmentation_policy(cfg, is_train=False)
        assert isinstance(resize, T.ResizeShortestEdge) and resize.short_edge_length == (640, 640)
