"""Joint training in the trainers: the joint model, and the detector exported without its head.

With ``MODEL.META_ARCHITECTURE "JointRetinaNet"`` (:class:`~ssdet.modeling.joint.JointRetinaNet`),
:class:`JointTrainerMixin` (a base of :class:`~ssdet.engine.Trainer`, hence of the student's
trainer too) resolves the head's class count from the dataset when it is 0 and adds
:class:`DetectorExport`, which writes ``OUTPUT_DIR/model_final_detector.pth`` when training
ends. The train loaders pair each detection batch with classification images
(:func:`~ssdet.data.joint.add_classification_batches`). The steps need nothing else: Detectron2's
``SimpleTrainer`` / ``AMPTrainer`` pass the :class:`~ssdet.data.joint.JointBatch` to the model,
which returns the detection losses plus ``loss_joint_cls``; the student's step forwards the
classification images as a part of its own.
"""

import logging
import os
from collections.abc import Mapping

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch import nn

from ssdet.data.joint import is_joint_training, joint_num_classes
from ssdet.modeling.joint import detector_state_dict
from ssdet.utils.io import atomic_open

__all__ = [
    "DETECTOR_CHECKPOINT",
    "DetectorExport",
    "JointTrainerMixin",
    "detector_config",
    "save_detector_checkpoint",
    "with_joint_num_classes",
]

logger = logging.getLogger(__name__)

# File name, in OUTPUT_DIR, of the final detector without the classification head.
DETECTOR_CHECKPOINT = "model_final_detector.pth"
# The detector JointRetinaNet extends, and the model of its exported weights.
_DETECTOR_META_ARCHITECTURE = "RetinaNet"


def with_joint_num_classes(cfg: CfgNode) -> CfgNode:
    """``cfg`` with ``SSDET.JOINT.NUM_CLASSES`` resolved: a copy holding the dataset's class count
    when it is 0 (the model knows no dataset), else ``cfg`` itself."""
    if cfg.SSDET.JOINT.NUM_CLASSES:
        return cfg
    resolved = cfg.clone()
    resolved.defrost()
    resolved.SSDET.JOINT.NUM_CLASSES = joint_num_classes(cfg)
    resolved.freeze()
    return resolved


def detector_config(cfg: CfgNode) -> CfgNode:
    """The config of a joint model's detector alone (what :func:`save_detector_checkpoint`
    writes): ``cfg`` with ``MODEL.META_ARCHITECTURE "RetinaNet"``; other configs unchanged."""
    if not is_joint_training(cfg):
        return cfg
    detector = cfg.clone()
    detector.defrost()
    detector.MODEL.META_ARCHITECTURE = _DETECTOR_META_ARCHITECTURE
    detector.freeze()
    return detector


def save_detector_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Write a joint model's weights without the classification head, as a Detectron2 checkpoint.

    The file (``{"model": state_dict}``) loads into a plain RetinaNet built from the same config,
    with no missing or unexpected keys; it is written atomically.

    Args:
        state_dict: the joint model's state dict (or a plain detector's).
        path: output ``.pth`` file.
    """
    weights = {k: v.detach().cpu() for k, v in detector_state_dict(state_dict).items()}
    with atomic_open(path, "wb") as f:
        torch.save({"model": weights}, f)
    logger.info("Saved the detector without the joint classification head to %s", path)


class DetectorExport(HookBase):
    """After the last iteration, save the detector without its classification head.

    Runs with Detectron2's final checkpoint (``model_final.pth``, which keeps the head so that
    joint training can resume); only the main process writes.

    Args:
        model: the (unwrapped) joint model.
        path: output file.
    """

    def __init__(self, model: nn.Module, path: str):
        self.model = model
        self.path = path

    def after_step(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter and comm.is_main_process():
            save_detector_checkpoint(self.model.state_dict(), self.path)


class JointTrainerMixin:
    """``DefaultTrainer`` mixin: the joint model and its detector export with ``SSDET.JOINT``.

    Unless the model is ``JointRetinaNet`` it changes nothing. Put it before ``DefaultTrainer`` in
    the bases, so that builders of the subclass (e.g. a backbone init in ``build_model``) wrap it.
    """

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        if is_joint_training(cfg):
            cfg = with_joint_num_classes(cfg)
        return super().build_model(cfg)

    def build_hooks(self) -> list[HookBase]:
        hooks = super().build_hooks()
        if is_joint_training(self.cfg):
            # The checkpointer holds the model without its DDP wrapper.
            path = os.path.join(self.cfg.OUTPUT_DIR, DETECTOR_CHECKPOINT)
            hooks.append(DetectorExport(self.checkpointer.model, path))
        return hooks
