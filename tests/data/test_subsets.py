import pytest

from ssdet.data import split_labeled
from ssdet.utils.errors import InputError


def dicts(n: int, offset: int = 0) -> list[dict]:
    return [{"image_id": offset + 7 * i, "file_name": f"{i}.jpg"} for i in range(n)]


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5, 1.0])
def test_fraction_and_disjointness(fraction):
    data = dicts(1000)
    labeled, rest = split_labeled(data, fraction, seed=3)
    assert len(labeled) == round(fraction * 1000)
    ids_l, ids_r = {d["image_id"] for d in labeled}, {d["image_id"] for d in rest}
    assert not ids_l & ids_r
    assert ids_l | ids_r == {d["image_id"] for d in data}


def test_deterministic_and_order_independent():
    data = dicts(500)
    a, _ = split_labeled(data, 0.2, seed=1)
    b, _ = split_labeled(list(reversed(data)), 0.2, seed=1)
    assert sorted(d["image_id"] for d in a) == sorted(d["image_id"] for d in b)
    c, _ = split_labeled(data, 0.2, seed=2)
    assert {d["image_id"] for d in a} != {d["image_id"] for d in c}


def test_nested_across_fractions():
    data = dicts(400)
    small = {d["image_id"] for d in split_labeled(data, 0.1, seed=0)[0]}
    large = {d["image_id"] for d in split_labeled(data, 0.5, seed=0)[0]}
    assert small < large


def test_at_least_one_image():
    assert len(split_labeled(dicts(5), 0.01, seed=0)[0]) == 1


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(InputError, match="LABELED_FRACTION"):
        split_labeled(dicts(10), fraction, seed=0)


def test_duplicate_ids_rejected():
    with pytest.raises(InputError, match="duplicate"):
        split_labeled(dicts(3) + dicts(3), 0.5, seed=0)
