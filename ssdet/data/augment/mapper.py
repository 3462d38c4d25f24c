"""Detectron2's DatasetMapper, with the instance boxes handed to the augmentations."""

import copy

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from ssdet.data.augment.policies import build_augmentation_policy
from ssdet.utils.errors import InputError

__all__ = ["PolicyDatasetMapper", "annotation_boxes"]


def annotation_boxes(annotations: list[dict]) -> np.ndarray:
    """(N, 4) float32 XYXY_ABS boxes of the non-crowd annotations, in order.

    These are the instances ``DatasetMapper`` keeps, so the augmentations see the same boxes as
    the ones ``transform_instance_annotations`` later moves.
    """
    boxes = [
        BoxMode.convert(anno["bbox"], anno["bbox_mode"], BoxMode.XYXY_ABS)
        for anno in annotations
        if anno.get("iscrowd", 0) == 0
    ]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


class PolicyDatasetMapper(DatasetMapper):
    """``DatasetMapper`` for the augmentation policies S1..S4.

    Two differences from Detectron2's mapper, whose arguments it takes:

    * the ``AugInput`` carries the boxes of the non-crowd annotations (Detectron2's carries
      none), which AutoAugment's box-only ops and BBox_Cutout act on;
    * built from a config, its augmentations are those of ``cfg.SSDET.AUGMENT.POLICY``
      (:func:`~ssdet.data.augment.build_augmentation_policy`).

    Everything else (image reading, annotation transforms, empty-instance filtering) is
    Detectron2's.

    Args:
        keep_scores: also give the instances ``gt_scores`` (float32 (K,)), the annotations'
            ``"score"`` (the teacher's, in pseudo-label datasets), for score-weighted pseudo
            targets (:mod:`ssdet.modeling.pseudo_targets`). Every non-crowd annotation must have
            one.
        kwargs: the arguments of Detectron2's ``DatasetMapper``.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, keep_scores: bool = False, **kwargs):
        super().__init__(is_train, **kwargs)
        self.keep_scores = keep_scores

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        ret = super().from_config(cfg, is_train)
        augmentations = build_augmentation_policy(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:
            if cfg.SSDET.AUGMENT.POLICY != "D2":
                raise InputError(
                    f"INPUT.CROP.ENABLED adds a crop before policy {cfg.SSDET.AUGMENT.POLICY}, "
                    "which crops to SSDET.AUGMENT.OUTPUT_SIZE itself; disable INPUT.CROP."
                )
            augmentations.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        ret["augmentations"] = augmentations
        return ret

    def __call__(self, dataset_dict: dict) -> dict:
        """Map a dataset dict as ``DatasetMapper.__call__`` does, with boxes in the ``AugInput``.

        Args:
            dataset_dict: metadata of one image, in Detectron2's dataset format.

        Returns:
            The dict with "image" ((C, H, W) uint8 tensor) and, in training, "instances".
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        else:
            sem_seg_gt = None

        boxes = annotation_boxes(dataset_dict.get("annotations", []))
        aug_input = T.AugInput(image, boxes=boxes, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg

        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _transform_annotations(self, dataset_dict: dict, transforms, image_shape) -> None:
        if not self.keep_scores:
            super()._transform_annotations(dataset_dict, transforms, image_shape)
            return
        # Detectron2's version builds the instances from the annotations' boxes and classes only
        # and filters the empty ones; the same public steps here, with the scores set before the
        # filter so that they stay aligned with the boxes. Pseudo labels have no masks or
        # keypoints.
        annotations = [a for a in dataset_dict.pop("annotations") if a.get("iscrowd", 0) == 0]
        transformed = [
            utils.transform_instance_annotations(
                a, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for a in annotations
        ]
        instances = utils.annotations_to_instances(transformed, image_shape)
        instances.gt_scores = torch.tensor(
            [float(a["score"]) for a in annotations], dtype=torch.float32
        )
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
