"""The supervised trainer: Detectron2's ``DefaultTrainer`` with ssdet's data and evaluation."""

import os

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from ssdet.data import check_num_classes, check_registered, get_labeled_dataset_dicts
from detectron2.data.detection_utils import build_augmentation as build_augmentation_policy  # TEMP


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` whose builders use ssdet's labeled subsets, policies and COCO AP.

    Checkpointing, the LR schedule, periodic evaluation, logging and ``launch`` are Detectron2's.
    """

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        mapper = DatasetMapper(
            cfg, is_train=True, augmentations=build_augmentation_policy(cfg, is_train=True)
        )
        return build_detection_train_loader(
            cfg, mapper=mapper, dataset=get_labeled_dataset_dicts(cfg)
        )

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        check_registered([dataset_name])
        loader = build_detection_test_loader(cfg, dataset_name)
        check_num_classes(cfg, dataset_name)
        return loader

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)
