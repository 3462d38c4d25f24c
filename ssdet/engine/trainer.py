"""The supervised trainer: Detectron2's ``DefaultTrainer`` with ssdet's data and evaluation."""

import os

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from ssdet.data import check_num_classes, check_registered, get_labeled_dataset_dicts
from ssdet.data.augment import PolicyDatasetMapper
from ssdet.data.joint import add_classification_batches
from ssdet.engine.joint import JointTrainerMixin
from ssdet.modeling.init import apply_backbone_init
from ssdet.solver import build_optimizer


class Trainer(JointTrainerMixin, DefaultTrainer):
    """``DefaultTrainer`` with ssdet's labeled subsets, Augment-S1..S4 policies and COCO AP.

    With ``SSDET.JOINT.ENABLED`` it trains detection and classification jointly
    (:class:`~ssdet.engine.joint.JointTrainerMixin`).

    Checkpointing, the LR schedule, periodic evaluation, logging and ``launch`` are Detectron2's.
    """

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        mapper = PolicyDatasetMapper(cfg, is_train=True)
        loader = build_detection_train_loader(
            cfg, mapper=mapper, dataset=get_labeled_dataset_dicts(cfg)
        )
        return add_classification_batches(loader, cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        check_registered([dataset_name])
        loader = build_detection_test_loader(cfg, dataset_name)
        check_num_classes(cfg, dataset_name)
        return loader

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def train(self) -> dict | None:
        """Train, then return the final evaluation (``{dataset: {"bbox": metrics}}``).

        ``DefaultTrainer.train`` returns it only when ``TEST.EXPECTED_RESULTS`` is set; its
        ``EvalHook`` evaluates after the last iteration either way and keeps the result.
        """
        super().train()
        return getattr(self, "_last_eval_results", None)

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's ``resume_or_load``; a run that starts fresh first gets its backbone init.

        ``SSDET.INIT`` is applied (and recorded in ``OUTPUT_DIR/init.json``) unless the run
        resumes from a checkpoint in ``OUTPUT_DIR``; see :mod:`ssdet.modeling.init`.
        """
        if not (resume and self.checkpointer.has_checkpoint()):
            apply_backbone_init(self.checkpointer.model, self.cfg)
        super().resume_or_load(resume=resume)
