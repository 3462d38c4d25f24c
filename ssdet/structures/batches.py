"""The batches a training step gets, as plain named tuples that data builds and models read.

They live below both: ``ssdet.data`` builds them, ``ssdet.modeling`` and ``ssdet.engine`` consume
them, and neither imports the other for them (Detectron2 keeps ``Instances`` and ``Boxes`` in
``detectron2.structures`` for the same reason).
"""

from typing import Any, NamedTuple

import torch

__all__ = ["ClassificationBatch", "JointBatch", "MixedBatch"]


class MixedBatch(NamedTuple):
    """One process's training batch, as two lists of mapped dataset dicts.

    Attributes:
        human: the human-labeled images (Detectron2's mapped dicts: "image" (C, H, W) uint8,
            "instances", ...); empty when ``PSEUDO_RATIO`` is 1.
        pseudo: the pseudo-labeled images, in the same format; empty when ``PSEUDO_RATIO`` is 0.
    """

    human: list[dict]
    pseudo: list[dict]


class ClassificationBatch(NamedTuple):
    """One process's classification images and labels.

    Attributes:
        images: (N, C, H, W) uint8 images in the detector's ``INPUT.FORMAT`` channel order, not
            normalized (the model applies its own pixel mean and std).
        labels: (N,) int64 class indices into the dataset's sorted class folders.
    """

    images: torch.Tensor
    labels: torch.Tensor


class JointBatch(NamedTuple):
    """One process's joint-training batch.

    Attributes:
        detection: the detection loader's batch, unchanged (a list of mapped dicts for
            :class:`~ssdet.engine.Trainer`, a :class:`~ssdet.data.mixed.MixedBatch` for the
            student).
        classification: the classification images of the same step.
    """

    detection: Any
    classification: ClassificationBatch
