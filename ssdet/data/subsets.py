"""Deterministic labeled subsets of a training set (the paper's 10/20/50/100% COCO study)."""

import numpy as np

from ssdet.utils.errors import InputError


def split_labeled(
    dataset_dicts: list[dict], fraction: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """Split a dataset into a labeled subset of ``fraction`` of its images and the rest.

    The draw depends only on the sorted image ids, the fraction and the seed, so it is the same on
    every machine and rank. Subsets of one seed are nested (the 10% subset is inside the 20% one),
    which makes data-size curves compare like with like.

    Args:
        dataset_dicts: Detectron2 dataset dicts with unique ``image_id``.
        fraction: in (0, 1]; the subset has ``max(1, round(fraction * N))`` images.
        seed: seed of the draw.

    Returns:
        (labeled, rest): two disjoint lists that together hold every input dict, each in input
        order.
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"SSDET.DATA.LABELED_FRACTION must be in (0, 1], got {fraction}")
    ids = sorted(d["image_id"] for d in dataset_dicts)
    if len(set(ids)) != len(ids):
        raise InputError("Dataset has duplicate image_id values; a labeled subset needs unique ids")
    count = max(1, round(fraction * len(ids)))
    order = np.random.RandomState(seed).permutation(len(ids))
    chosen = {ids[i] for i in order[:count]}
    labeled = [d for d in dataset_dicts if d["image_id"] in chosen]
    rest = [d for d in dataset_dicts if d["image_id"] not in chosen]
    return labeled, rest
