"""Tests of the student's filter: thresholds, class balancing, ignore thresholds, the "no pseudo
boxes" diagnostic."""

import logging

import numpy as np
import pytest

from ssdet.data.pseudo_labels import (
    PseudoLabelFilter,
)
from ssdet.utils.errors import InputError

from .conftest import CLASSES


def _kept(selection):
    """Per base image: the kept (class, score) pairs."""
    store = selection.store
    out = []
    for i in range(store.num_images):
        rows = selection.box_rows[selection.box_offsets[i] : selection.box_offsets[i + 1]]
        out.append([(int(store.classes[r]), round(float(store.scores[r]), 2)) for r in rows])
    return out


def test_filter_score_threshold(filter_store):
    selection = PseudoLabelFilter().apply(filter_store)
    assert _kept(selection) == [[(0, 0.9), (1, 0.6)], [(2, 0.55), (2, 0.5)], []]
    np.testing.assert_array_equal(selection.image_index, [0, 1])  # empty image dropped
    np.testing.assert_array_equal(selection.image_classes, [0, 2, -1])
    with_empty = PseudoLabelFilter(keep_empty_images=True).apply(filter_store)
    np.testing.assert_array_equal(with_empty.image_index, [0, 1, 2])


def test_filter_per_class_thresholds(filter_store):
    selection = PseudoLabelFilter(class_score_threshs={"dog": 0.3, 0: 0.95}).apply(filter_store)
    assert _kept(selection) == [[(1, 0.6), (2, 0.4)], [(2, 0.55), (2, 0.5)], []]
    assert selection.image_classes[0] == 1  # the top *kept* box decides the image's class
    with pytest.raises(InputError, match="Unknown class 'cat'"):
        PseudoLabelFilter(class_score_threshs={"cat": 0.3}).apply(filter_store)


def test_filter_max_boxes_and_min_size(filter_store):
    top1 = PseudoLabelFilter(score_thresh=0.3, max_boxes_per_image=1).apply(filter_store)
    assert _kept(top1) == [[(0, 0.9)], [(2, 0.55)], []]
    sized = PseudoLabelFilter(score_thresh=0.3, min_box_size=5).apply(filter_store)
    assert _kept(sized) == [[(0, 0.9), (2, 0.4)], [(2, 0.55), (2, 0.5), (0, 0.45)], []]


def test_filter_from_config():
    from detectron2.config import get_cfg

    from ssdet.config import add_ssdet_config

    cfg = get_cfg()
    add_ssdet_config(cfg)
    assert PseudoLabelFilter.from_config(cfg) == PseudoLabelFilter()
    cfg.merge_from_list(
        [
            "SSDET.PSEUDO_LABELS.CLASS_SCORE_THRESHS",
            [["dog", 0.3], [0, 0.7]],
            "SSDET.PSEUDO_LABELS.BALANCE_CLASSES",
            True,
            "SSDET.PSEUDO_LABELS.IMAGES_PER_CLASS",
            7,
        ]
    )
    f = PseudoLabelFilter.from_config(cfg)
    assert f.class_score_threshs == {"dog": 0.3, 0: 0.7}
    assert f.balance_classes and f.images_per_class == 7
    with pytest.raises(ValueError, match="Unknown class-balancing subsample rule"):
        PseudoLabelFilter(balance_subsample="oldest")


def _per_class(selection):
    return np.bincount(selection.image_classes[selection.image_index], minlength=len(CLASSES))


def test_balancing_hits_the_target(balance_store):
    f = PseudoLabelFilter(balance_classes=True, images_per_class=4)
    selection = f.apply(balance_store)
    np.testing.assert_array_equal(_per_class(selection), [4, 4, 4])
    index = selection.image_index
    # Too many persons: the 4 with the highest top score (images 2..5) are kept, once each.
    np.testing.assert_array_equal(index[selection.image_classes[index] == 0], [2, 3, 4, 5])
    # Too few cars: both duplicated; the single dog image repeated 4 times.
    np.testing.assert_array_equal(index[selection.image_classes[index] == 1], [6, 6, 7, 7])
    np.testing.assert_array_equal(index[selection.image_classes[index] == 2], [8, 8, 8, 8])
    assert np.all(np.diff(index) >= 0)
    # Target 0 is the mean count over the classes present: (6 + 2 + 1) / 3 = 3.
    mean = PseudoLabelFilter(balance_classes=True).apply(balance_store)
    np.testing.assert_array_equal(_per_class(mean), [3, 3, 3])
    # Empty images are kept once each, outside the balancing.
    empty = PseudoLabelFilter(balance_classes=True, keep_empty_images=True).apply(balance_store)
    assert len(empty.image_index) == 9 + 2


def test_balancing_is_deterministic_under_seed(balance_store):
    def draw(seed):
        return PseudoLabelFilter(
            balance_classes=True, images_per_class=5, balance_subsample="random", balance_seed=seed
        ).apply(balance_store)

    first, again = draw(0), draw(0)
    np.testing.assert_array_equal(first.image_index, again.image_index)
    np.testing.assert_array_equal(_per_class(first), [5, 5, 5])
    # The car remainder (5 = 2 * 2 + 1) and the person subsample are seeded draws.
    draws = {tuple(draw(seed).image_index.tolist()) for seed in range(8)}
    assert len(draws) > 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(score_thresh=0.5, ignore_score_thresh=0.5),
        dict(score_thresh=0.5, class_score_threshs={"dog": 0.2}, ignore_score_thresh=0.3),
        dict(ignore_score_thresh=-0.1),
    ],
)
def test_ignore_threshold_must_be_below_keep_thresholds(kwargs):
    with pytest.raises(InputError, match="IGNORE_SCORE_THRESH"):
        PseudoLabelFilter(**kwargs)


def test_almost_empty_warning(filter_store, caplog):
    with caplog.at_level(logging.WARNING, logger="ssdet.data.pseudo_labels"):
        PseudoLabelFilter().apply(filter_store)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="ssdet.data.pseudo_labels"):
        selection = PseudoLabelFilter(score_thresh=0.99).apply(filter_store)
    (record,) = caplog.records
    message = record.getMessage()
    assert "Almost no pseudo boxes" in message
    assert "SSDET.PSEUDO_LABELS.SCORE_THRESH=0.99" in message
    assert "Lower SSDET.PSEUDO_LABELS.SCORE_THRESH" in message and "0.900" in message
    assert selection.num_kept_boxes == 0
