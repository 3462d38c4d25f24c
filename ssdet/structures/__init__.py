"""Data structures shared by ``ssdet.data`` (which builds them) and the models and trainers."""

from ssdet.structures.batches import ClassificationBatch, JointBatch, MixedBatch

__all__ = ["ClassificationBatch", "JointBatch", "MixedBatch"]
