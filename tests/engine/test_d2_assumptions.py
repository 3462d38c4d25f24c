"""The private Detectron2 surface ssdet relies on, asserted against the installed Detectron2.

ssdet extends Detectron2 without copying it, which means it relies on some things Detectron2 does
not promise: underscore attributes (``DefaultTrainer._trainer``, ``_last_eval_results``,
``SimpleTrainer._data_loader_iter``, RetinaNet's lazily created ``loss_normalizer``), names that
it swaps in a Detectron2 module (``defaults.create_ddp_model``, ``coco_evaluation.COCOeval_opt``),
protected methods it overrides or calls (``DatasetMapper._transform_annotations``, the
checkpointer's ``_load_file`` / ``_torch_load`` / ``_load_model``), and the exact signatures of
methods it shadows on an instance (``DenseDetector.forward_training``, ``RetinaNet.label_anchors``
and ``losses``). unbiased-teacher broke silently on such a change in a Detectron2 upgrade: its
loss normalization kept running, wrongly.

Each test here checks one assumption, by behaviour where that is cheap (a tiny RetinaNet from
``configs/mini/retinanet_instant_test.yaml``, a one-step toy ``DefaultTrainer``) and by
``inspect.signature`` otherwise. After a Detectron2 upgrade, a broken assumption fails one named
test. Its message names the assumption, the ssdet file that relies on it, and the supported
Detectron2 version. Fix that file, or pin the supported version, before trusting any training
result.
"""

import contextlib
import importlib
import inspect
import os
import signal
from collections.abc import Iterator

import detectron2
import detectron2.engine.defaults as d2_defaults
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from detectron2.evaluation import COCOEvaluator, coco_evaluation
from detectron2.layers import Conv2d
from detectron2.modeling import FPN, ResNet, build_model
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer
from fvcore.nn import sigmoid_focal_loss_jit
from fvcore.transforms.transform import Transform
from torch import nn

import ssdet.engine.trainer  # noqa: F401  (installs ssdet's create_ddp_model in Detectron2)
from ssdet.config import add_ssdet_config

from ..conftest import REPO

SUPPORTED = "0.7.x (sal-detectron2 0.7.2, upstream commit a59f0563; see STACK.md)"


@contextlib.contextmanager
def assumption(what: str, where: str) -> Iterator[None]:
    """Turn any failure inside into one message naming the assumption, its user and versions."""
    try:
        yield
    except Exception as e:  # an AssertionError, or the AttributeError of a removed name
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        # "from None": the report is this message alone, not a chained traceback.
        raise pytest.fail.Exception(
            f"Detectron2 assumption broken: {what}.\n"
            f"  Relied on by: {where}.\n"
            f"  Supported Detectron2: {SUPPORTED}; installed: {detectron2.__version__} "
            f"({os.path.dirname(detectron2.__file__)}).\n"
            f"  Detail: {detail}",
            pytrace=False,
        ) from None


def params(fn) -> list[str]:
    """The parameter names of ``fn``, in order (``self`` included for a function on a class)."""
    return list(inspect.signature(fn).parameters)


# ------------------------------------------------------------------------------------------------
# Module-level names ssdet imports from Detectron2's (and fvcore's) inner modules or swaps there.

MODULE_NAMES = [
    ("detectron2.engine.defaults", "create_ddp_model", "ssdet/engine/trainer.py"),
    ("detectron2.evaluation.coco_evaluation", "COCOeval_opt", "ssdet/evaluation/coco.py"),
    (
        "detectron2.data.build",
        "filter_images_with_only_crowd_annotations",
        "ssdet/data/build.py",
    ),
    ("detectron2.modeling.meta_arch.dense_detector", "DenseDetector", "ssdet/engine/student.py"),
    ("detectron2.modeling.meta_arch.retinanet", "RetinaNetHead", "ssdet/modeling/noise.py"),
    (
        "detectron2.modeling.backbone.resnet",
        "DeformBottleneckBlock",
        "ssdet/modeling/noise.py",
    ),
    ("detectron2.modeling.backbone.resnet", "BasicStem", "ssdet/modeling/any_width_resnet.py"),
    (
        "detectron2.modeling.backbone.resnet",
        "build_resnet_backbone",
        "ssdet/modeling/any_width_resnet.py",
    ),
    ("detectron2.modeling.backbone.fpn", "LastLevelP6P7", "ssdet/modeling/any_width_resnet.py"),
    ("detectron2.solver.build", "get_default_optimizer_params", "ssdet/solver/build.py"),
    ("detectron2.solver.build", "maybe_add_gradient_clipping", "ssdet/solver/build.py"),
    (
        "detectron2.structures.boxes",
        "matched_pairwise_iou",
        "ssdet/data/pseudo_labels/report.py",
    ),
    ("detectron2.evaluation.evaluator", "inference_context", "ssdet/pretrain/evaluation.py"),
    ("detectron2.utils.collect_env", "collect_env_info", "ssdet/engine/experiment/run.py"),
    ("fvcore.nn", "sigmoid_focal_loss_jit", "ssdet/modeling/pseudo_targets.py"),
]


@pytest.mark.parametrize(
    ("module", "name", "where"), MODULE_NAMES, ids=[f"{m}.{n}" for m, n, _ in MODULE_NAMES]
)
def test_module_level_names_exist(module, name, where):
    with assumption(f"{module} has a module-level {name!r}", where):
        assert hasattr(importlib.import_module(module), name)


def test_optimizer_params_helper_takes_the_keywords_ssdet_passes():
    from detectron2.solver.build import get_default_optimizer_params

    with assumption(
        "get_default_optimizer_params(model, base_lr=, weight_decay_norm=, bias_lr_factor=, "
        "weight_decay_bias=)",
        "ssdet/solver/build.py",
    ):
        names = params(get_default_optimizer_params)
        assert names[0] == "model", names
        assert {"base_lr", "weight_decay_norm", "bias_lr_factor", "weight_decay_bias"} <= set(
            names
        ), names


# ------------------------------------------------------------------------------------------------
# DefaultTrainer / SimpleTrainer / AMPTrainer.


class _ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, data):
        return {"loss_toy": (self.weight - 1.0).pow(2).sum()}


class _ToyTrainer(DefaultTrainer):
    """A DefaultTrainer on a one-parameter model: what ssdet's trainers rely on, nothing else."""

    eval_results = {"toy": {"metric": 1.0}}

    @classmethod
    def build_model(cls, cfg):
        return _ToyModel()

    @classmethod
    def build_optimizer(cls, cfg, model):
        return torch.optim.SGD(model.parameters(), lr=0.1)

    @classmethod
    def build_train_loader(cls, cfg):
        return [[{}]] * 4

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        return cls.eval_results

    def build_writers(self):
        return []

    def build_hooks(self):
        # ssdet's SsdetCheckpointerMixin replaces the checkpointer here, before the hooks exist.
        self.checkpointer_before_hooks = getattr(self, "checkpointer", None)
        self.checkpointer = DetectionCheckpointer(
            self.checkpointer.model, self.checkpointer.save_dir, **self.checkpointer.checkpointables
        )
        self.built_hooks = super().build_hooks()
        return self.built_hooks


@pytest.fixture
def toy_cfg(tmp_path):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.MAX_ITER = 1
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def test_default_trainer_calls_create_ddp_model_by_module_name(toy_cfg, monkeypatch):
    where = "ssdet/engine/trainer.py (its CPU-aware create_ddp_model replaces Detectron2's)"
    calls = []
    installed = d2_defaults.create_ddp_model

    def recording(model, **kwargs):
        calls.append(model)
        return installed(model, **kwargs)

    with assumption("ssdet's create_ddp_model is installed as defaults.create_ddp_model", where):
        assert installed is ssdet.engine.trainer.create_ddp_model
        assert params(ssdet.engine.trainer._d2_create_ddp_model)[0] == "model"
    monkeypatch.setattr(d2_defaults, "create_ddp_model", recording)
    with assumption(
        "DefaultTrainer.__init__ looks create_ddp_model up in detectron2.engine.defaults at call "
        "time and passes it the built model",
        where,
    ):
        _ToyTrainer(toy_cfg)
        assert len(calls) == 1 and isinstance(calls[0], _ToyModel), calls


def test_default_trainer_has_a_simple_trainer_in_trainer(toy_cfg):
    where = (
        "ssdet/engine/trainer.py and ssdet/engine/student.py (they replace self._trainer around "
        "its model, data_loader and optimizer)"
    )
    with assumption(
        "DefaultTrainer keeps its step in self._trainer, a SimpleTrainer with .model, "
        ".data_loader and .optimizer (an AMPTrainer with SOLVER.AMP.ENABLED)",
        where,
    ):
        trainer = _ToyTrainer(toy_cfg)
        inner = trainer._trainer
        assert type(inner) is SimpleTrainer, type(inner)
        assert inner.model is trainer.model
        assert isinstance(inner.model, _ToyModel)
        assert inner.data_loader == _ToyTrainer.build_train_loader(toy_cfg)
        assert inner.optimizer is trainer.optimizer
        # DefaultTrainer forwards run_step, iter and state to the inner trainer at run time.
        trainer._trainer = replaced = SimpleTrainer(inner.model, inner.data_loader, inner.optimizer)
        trainer.train()
        assert replaced.iter == 0  # it ran the one step
    with assumption(
        "DefaultTrainer.__init__ picks AMPTrainer for SOLVER.AMP.ENABLED (CUDA-only: why ssdet "
        "swaps in its CPU autocast step)",
        "ssdet/engine/trainer.py",
    ):
        source = inspect.getsource(DefaultTrainer.__init__)
        assert "AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer" in source


def test_checkpoint_hooks_order_and_schedule(toy_cfg):
    where = "ssdet/engine/exact_resume.py (add_exact_resume_hooks, CollectRankState)"
    with assumption(
        "DefaultTrainer.build_hooks gives every process an LRScheduler hook, before the "
        "PeriodicCheckpointer that only the main process has",
        where,
    ):
        kinds = [type(h) for h in _ToyTrainer(toy_cfg)._hooks]
        assert kinds.index(hooks.LRScheduler) < kinds.index(hooks.PeriodicCheckpointer), kinds
        source = inspect.getsource(DefaultTrainer.build_hooks)
        assert "if comm.is_main_process():\n            ret.append(hooks.PeriodicCheckpointer" in (
            source
        )
    with assumption(
        "fvcore's PeriodicCheckpointer.step saves at (iteration + 1) % period == 0 and at "
        "iteration >= max_iter - 1",
        where,
    ):
        source = inspect.getsource(PeriodicCheckpointer.step)
        assert "(iteration + 1) % self.period == 0" in source
        assert "iteration >= self.max_iter - 1" in source


def test_checkpointer_exists_before_build_hooks_and_the_hook_keeps_the_replacement(toy_cfg):
    with assumption(
        "DefaultTrainer.__init__ builds self.checkpointer (a DetectionCheckpointer with .model, "
        ".save_dir, .save_to_disk, .checkpointables) before it calls build_hooks, and "
        "PeriodicCheckpointer keeps the checkpointer it is given",
        "ssdet/checkpoint/checkpointer.py (SsdetCheckpointerMixin.build_hooks)",
    ):
        trainer = _ToyTrainer(toy_cfg)
        built = trainer.checkpointer_before_hooks
        assert isinstance(built, DetectionCheckpointer), built
        assert built.save_dir == toy_cfg.OUTPUT_DIR and built.save_to_disk is True
        # The optimizer and LR scheduler are in the trainer's state dict.
        assert set(built.checkpointables) == {"trainer"}, set(built.checkpointables)
        periodic = [h for h in trainer.built_hooks if isinstance(h, hooks.PeriodicCheckpointer)]
        assert len(periodic) == 1 and periodic[0].checkpointer is trainer.checkpointer
        assert trainer.checkpointer is not built
    with assumption(
        "DefaultTrainer writes the metrics every 20 iterations (PeriodicWriter period)",
        "ssdet/engine/student.py (_STATS_PERIOD)",
    ):
        writers = [h for h in trainer.built_hooks if isinstance(h, hooks.PeriodicWriter)]
        assert [w._period for w in writers] == [20]


def test_eval_hook_leaves_last_eval_results(toy_cfg):
    with assumption(
        "after training, DefaultTrainer's EvalHook leaves the final evaluation in "
        "self._last_eval_results, and train() returns None without TEST.EXPECTED_RESULTS",
        "ssdet/engine/trainer.py (Trainer.train) and ssdet/pretrain/engine.py "
        "(PretrainTrainer.train)",
    ):
        trainer = _ToyTrainer(toy_cfg)
        assert not hasattr(trainer, "_last_eval_results")
        assert trainer.train() is None
        assert trainer._last_eval_results == _ToyTrainer.eval_results
        # TrainerBase.train leaves iter one past the last step.
        assert (trainer.start_iter, trainer.iter, trainer.max_iter) == (0, 1, 1)


def test_default_trainer_hooks_ssdet_overrides_keep_their_signatures():
    where = "ssdet/engine/trainer.py, ssdet/pretrain/engine.py (overrides)"
    with assumption("DefaultTrainer's builder/test signatures", where):
        # ssdet's build_evaluator adds an optional output_folder.
        assert params(DefaultTrainer.build_evaluator) == ["cfg", "dataset_name"]
        assert params(DefaultTrainer.test) == ["cfg", "model", "evaluators"]
        assert params(DefaultTrainer.resume_or_load) == ["self", "resume"]
        for name in ("build_model", "build_train_loader"):
            assert params(getattr(DefaultTrainer, name)) == ["cfg"], name
        assert params(DefaultTrainer.build_optimizer) == ["cfg", "model"]
        assert params(DefaultTrainer.build_test_loader) == ["cfg", "dataset_name"]


def test_simple_trainer_data_loader_iter_and_step_internals():
    where = "ssdet/engine/accumulation.py and ssdet/engine/student.py (their run_step)"
    model = _ToyModel()
    loader = [["first"], ["second"]]
    with assumption(
        "SimpleTrainer._data_loader_iter is one persistent iterator over data_loader", where
    ):
        trainer = SimpleTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
        assert next(trainer._data_loader_iter) == ["first"]
        assert next(trainer._data_loader_iter) == ["second"]
    with assumption(
        "SimpleTrainer has zero_grad_before_forward, gather_metric_period, after_backward() and "
        "_write_metrics(loss_dict, data_time, ...)",
        where,
    ):
        assert trainer.zero_grad_before_forward is False
        assert trainer.gather_metric_period == 1
        assert params(SimpleTrainer.after_backward) == ["self"]
        assert params(SimpleTrainer._write_metrics)[:3] == ["self", "loss_dict", "data_time"]
        assert params(SimpleTrainer.__init__)[:4] == ["self", "model", "data_loader", "optimizer"]


def test_amp_trainer_attributes():
    with assumption(
        "AMPTrainer takes grad_scaler, precision and log_grad_scaler and keeps them as "
        "attributes of those names",
        "ssdet/engine/accumulation.py (AMPGradientAccumulationTrainer)",
    ):
        names = params(AMPTrainer.__init__)
        assert names[:4] == ["self", "model", "data_loader", "optimizer"], names
        assert {"grad_scaler", "precision", "log_grad_scaler"} <= set(names), names
        source = inspect.getsource(AMPTrainer.__init__)
        for attribute in ("grad_scaler", "precision", "log_grad_scaler"):
            assert f"self.{attribute} = {attribute}" in source, attribute
        assert issubclass(AMPTrainer, SimpleTrainer)


# ------------------------------------------------------------------------------------------------
# RetinaNet / DenseDetector: the student step's per-part losses and score-weighted targets.


@pytest.fixture(scope="module")
def retinanet() -> RetinaNet:
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model


def _batch() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    images = []
    for boxes, classes in (([[4, 4, 36, 36], [44, 44, 60, 60]], [0, 1]), ([[10, 20, 50, 50]], [2])):
        instances = Instances((64, 64))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor(classes)
        image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g)
        images.append({"image": image, "instances": instances})
    return images


def _train_forward(model: RetinaNet) -> tuple[dict, float]:
    """A training forward of two images; the losses and the foreground anchors of the batch."""
    with EventStorage() as storage:
        losses = model(_batch())
        num_pos = storage.history("num_pos_anchors").latest() * 2
    return losses, num_pos


def test_forward_training_signature():
    with assumption(
        "DenseDetector.forward_training(self, images, features, predictions, gt_instances), "
        "and RetinaNet's the same",
        "ssdet/engine/student.py (_losses_per_part)",
    ):
        expected = ["self", "images", "features", "predictions", "gt_instances"]
        assert params(DenseDetector.forward_training) == expected
        assert params(RetinaNet.forward_training) == expected
        assert issubclass(RetinaNet, DenseDetector)


def test_forward_training_is_looked_up_on_the_instance_with_dense_predictions(retinanet):
    seen = {}

    def recording(images, features, predictions, gt_instances):
        seen.update(images=images, features=features, predictions=predictions, gt=gt_instances)
        return type(retinanet).forward_training(
            retinanet, images, features, predictions, gt_instances
        )

    with assumption(
        "DenseDetector.forward calls self.forward_training (an instance attribute shadows it) "
        "with an ImageList, a list of (N, C, H, W) features, predictions as a list per output "
        "kind of lists per level of (N, ...) tensors, and a list of N Instances",
        "ssdet/engine/student.py (_losses_per_part slices each of them by rows)",
    ):
        retinanet.forward_training = recording
        try:
            losses, _ = _train_forward(retinanet)
        finally:
            del retinanet.forward_training
        assert set(losses) == {"loss_cls", "loss_box_reg"}, set(losses)
        assert isinstance(seen["images"], ImageList) and seen["images"].tensor.shape[0] == 2
        assert len(seen["images"].image_sizes) == 2
        assert isinstance(seen["features"], list)
        assert all(f.dim() == 4 and f.shape[0] == 2 for f in seen["features"])
        predictions = seen["predictions"]
        assert len(predictions) == 2  # RetinaNet: logits, anchor deltas
        for kind in predictions:
            assert len(kind) == len(seen["features"])
            assert all(level.shape[0] == 2 for level in kind)
        assert isinstance(seen["gt"], list) and len(seen["gt"]) == 2
        assert all(isinstance(i, Instances) for i in seen["gt"])


def test_loss_normalizer_is_a_lazily_created_ema_attribute(retinanet):
    with assumption(
        "DenseDetector._ema_update(name, value, initial_value, momentum=0.9) keeps a plain "
        "attribute, starting from initial_value when it is absent; RetinaNet.losses updates "
        "'loss_normalizer' with the batch's foreground anchor count (initial 100)",
        "ssdet/engine/student.py (_part_normalizer swaps, deletes and checkpoints it), "
        "ssdet/modeling/pseudo_targets.py",
    ):
        assert params(DenseDetector._ema_update) == [
            "self",
            "name",
            "value",
            "initial_value",
            "momentum",
        ]
        if hasattr(retinanet, "loss_normalizer"):
            del retinanet.loss_normalizer
        assert "loss_normalizer" not in vars(retinanet)
        _, num_pos = _train_forward(retinanet)
        first = retinanet.loss_normalizer
        assert isinstance(first, float) and "loss_normalizer" in vars(retinanet)
        assert first == pytest.approx(0.9 * 100 + 0.1 * max(num_pos, 1))
        retinanet.loss_normalizer = 7.0
        _, num_pos = _train_forward(retinanet)
        assert retinanet.loss_normalizer == pytest.approx(0.9 * 7.0 + 0.1 * max(num_pos, 1))
        del retinanet.loss_normalizer
        _, num_pos = _train_forward(retinanet)
        assert retinanet.loss_normalizer == pytest.approx(0.9 * 100 + 0.1 * max(num_pos, 1))


def test_label_anchors_and_losses_are_instance_looked_up_with_their_signatures(retinanet):
    where = "ssdet/modeling/pseudo_targets.py (score_weighted_classification)"
    with assumption(
        "RetinaNet.label_anchors(self, anchors, gt_instances) and RetinaNet.losses(self, "
        "anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)",
        where,
    ):
        assert params(RetinaNet.label_anchors) == ["self", "anchors", "gt_instances"]
        assert params(RetinaNet.losses) == [
            "self",
            "anchors",
            "pred_logits",
            "gt_labels",
            "pred_anchor_deltas",
            "gt_boxes",
        ]
    matcher = retinanet.anchor_matcher
    matcher_calls = []
    recomputed = {}

    def counting_matcher(match_quality_matrix):
        matcher_calls.append(match_quality_matrix.shape[0])
        return matcher(match_quality_matrix)

    def label_anchors(anchors, gt_instances):
        retinanet.anchor_matcher = counting_matcher
        try:
            labels, boxes = type(retinanet).label_anchors(retinanet, anchors, gt_instances)
        finally:
            retinanet.anchor_matcher = matcher
        recomputed["gt_counts"] = [len(i) for i in gt_instances]
        return labels, boxes

    def losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        result = type(retinanet).losses(
            retinanet, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )
        labels = torch.stack(gt_labels)
        valid = labels >= 0
        targets = nn.functional.one_hot(labels[valid], num_classes=retinanet.num_classes + 1)
        focal = sigmoid_focal_loss_jit(
            torch.cat(pred_logits, dim=1)[valid],
            targets[:, :-1].to(pred_logits[0].dtype),
            alpha=retinanet.focal_loss_alpha,
            gamma=retinanet.focal_loss_gamma,
            reduction="sum",
        )
        recomputed["loss_cls"] = (focal / retinanet.loss_normalizer).item()
        recomputed["returned"] = result["loss_cls"].item()
        return result

    with assumption(
        "RetinaNet.forward_training calls self.label_anchors and self.losses (instance "
        "attributes shadow them); label_anchors calls self.anchor_matcher once per image, in "
        "order; losses' loss_cls is the summed sigmoid focal loss (num_classes, "
        "focal_loss_alpha, focal_loss_gamma, background label num_classes) divided by "
        "loss_normalizer after losses updated it",
        where,
    ):
        retinanet.label_anchors = label_anchors
        retinanet.losses = losses
        try:
            _train_forward(retinanet)
        finally:
            del retinanet.label_anchors
            del retinanet.losses
        assert matcher_calls == recomputed["gt_counts"] == [2, 1], matcher_calls
        assert recomputed["returned"] == pytest.approx(recomputed["loss_cls"], rel=1e-5)


def test_move_to_current_device(retinanet):
    with assumption(
        "DenseDetector._move_to_current_device(x) moves a tensor to the model's device",
        "ssdet/modeling/joint.py (JointRetinaNet.classification_logits / _losses)",
    ):
        moved = retinanet._move_to_current_device(torch.zeros(2, dtype=torch.int64))
        assert moved.device == retinanet.device
        assert retinanet.pixel_mean.dim() == 3 and retinanet.pixel_std.dim() == 3


def test_retinanet_modules_the_student_noise_edits(retinanet):
    where = "ssdet/modeling/noise.py and ssdet/checkpoint/backbone_init.py"
    with assumption(
        "RetinaNet's head has nn.Sequential cls_subnet / bbox_subnet read by cls_score / "
        "bbox_pred; an FPN backbone keeps its ResNet in .bottom_up; ResNet.stages lists the "
        "blocks; the last residual conv (BasicBlock.conv2, BottleneckBlock.conv3) is a Conv2d "
        "with no activation",
        where,
    ):
        head = retinanet.head
        assert isinstance(head.cls_subnet, nn.Sequential)
        assert isinstance(head.bbox_subnet, nn.Sequential)
        assert isinstance(head.cls_score, nn.Module) and isinstance(head.bbox_pred, nn.Module)
        assert isinstance(retinanet.backbone, FPN)
        resnet = retinanet.backbone.bottom_up
        assert isinstance(resnet, ResNet)
        blocks = [block for stage in resnet.stages for block in stage]
        assert blocks and all(isinstance(b, BasicBlock) for b in blocks)
        assert all(isinstance(b.conv2, Conv2d) and b.conv2.activation is None for b in blocks)
        assert "conv3" in inspect.getsource(BottleneckBlock.__init__)

    class AddOne(nn.Module):
        def forward(self, x):
            return x + 1

    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    with assumption("detectron2.layers.Conv2d applies its activation after its norm", where):
        conv = Conv2d(1, 1, 1, bias=False, norm=AddOne(), activation=Double())
        nn.init.ones_(conv.weight)
        assert conv(torch.full((1, 1, 1, 1), 3.0)).item() == 8.0


# ------------------------------------------------------------------------------------------------
# Data.


def test_dataset_mapper_transform_annotations_and_attributes():
    where = "ssdet/data/augment/mapper.py (PolicyDatasetMapper)"
    with assumption(
        "DatasetMapper._transform_annotations(self, dataset_dict, transforms, image_shape) "
        "pops 'annotations' and sets 'instances'",
        where,
    ):
        assert params(DatasetMapper._transform_annotations) == [
            "self",
            "dataset_dict",
            "transforms",
            "image_shape",
        ]
        mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
        annotation = {"bbox": [1, 1, 5, 5], "bbox_mode": 0, "category_id": 3, "iscrowd": 0}
        record = {"annotations": [annotation]}
        mapper._transform_annotations(record, T.TransformList([]), (10, 10))
        assert "annotations" not in record
        assert record["instances"].gt_classes.tolist() == [3]
    with assumption(
        "DatasetMapper keeps is_train, augmentations, image_format, proposal_topk and "
        "keypoint_hflip_indices; from_config(cfg, is_train) returns its keyword arguments, "
        "'augmentations' included",
        where,
    ):
        assert mapper.is_train is True and mapper.image_format == "BGR"
        assert isinstance(mapper.augmentations, T.AugmentationList)
        assert mapper.proposal_topk is None and mapper.keypoint_hflip_indices is None
        assert params(DatasetMapper.from_config) == ["cfg", "is_train"]
        kwargs = DatasetMapper.from_config(get_cfg(), True)
        assert {"is_train", "augmentations", "image_format"} <= set(kwargs), set(kwargs)


def test_filter_images_with_only_crowd_annotations():
    from detectron2.data.build import filter_images_with_only_crowd_annotations

    with assumption(
        "filter_images_with_only_crowd_annotations(dicts) drops the images whose annotations "
        "are all crowd",
        "ssdet/data/build.py (get_labeled_dataset_dicts)",
    ):
        crowd = {"annotations": [{"iscrowd": 1}]}
        plain = {"annotations": [{"iscrowd": 0}]}
        assert filter_images_with_only_crowd_annotations([crowd, plain]) == [plain]


def test_aspect_ratio_groups():
    with assumption(
        "AspectRatioGroupedDataset puts landscape images (width > height) in group 0, the "
        "others in group 1",
        "ssdet/engine/student.py (_aspect_group)",
    ):
        images = [
            {"width": 2, "height": 1, "id": 0},
            {"width": 1, "height": 1, "id": 1},
            {"width": 3, "height": 1, "id": 2},
            {"width": 1, "height": 2, "id": 3},
        ]
        batches = iter(AspectRatioGroupedDataset(images, batch_size=2))
        assert [d["id"] for d in next(batches)] == [0, 2]
        assert [d["id"] for d in next(batches)] == [1, 3]
        source = inspect.getsource(AspectRatioGroupedDataset.__iter__)
        assert "bucket_id = 0 if w > h else 1" in source


def test_train_loader_builders_take_the_keywords_ssdet_passes():
    from detectron2.data import build_detection_train_loader
    from detectron2.data.samplers import TrainingSampler

    with assumption(
        "build_detection_train_loader(dataset, *, mapper, sampler, total_batch_size, "
        "aspect_ratio_grouping, num_workers, collate_fn) and TrainingSampler(size, seed=)",
        "ssdet/data/mixed.py and ssdet/data/joint.py",
    ):
        names = params(inspect.unwrap(build_detection_train_loader))
        expected = {
            "dataset",
            "mapper",
            "sampler",
            "total_batch_size",
            "aspect_ratio_grouping",
            "num_workers",
            "collate_fn",
        }
        assert expected <= set(names), names
        assert params(TrainingSampler.__init__)[:3] == ["self", "size", "shuffle"]
        assert "seed" in params(TrainingSampler.__init__)


def test_augmentation_and_transform_attribute_helpers():
    where = "ssdet/data/augment/ops.py, autoaugment.py, randaugment.py"

    class Aug(T.Augmentation):
        def __init__(self, degrees, fill=7):
            super().__init__()
            self._init(locals())

    class Tf(Transform):
        def __init__(self, height, width):
            super().__init__()
            self._set_attributes(locals())

        def apply_image(self, img):
            return img

        def apply_coords(self, coords):
            return coords

    with assumption(
        "T.Augmentation._init(locals()) and fvcore Transform._set_attributes(locals()) set the "
        "constructor's arguments as attributes",
        where,
    ):
        aug = Aug(30)
        assert (aug.degrees, aug.fill) == (30, 7)
        tf = Tf(4, 5)
        assert (tf.height, tf.width) == (4, 5)


# ------------------------------------------------------------------------------------------------
# Evaluation.


def test_coco_evaluator_reads_cocoeval_opt_from_its_module():
    where = "ssdet/evaluation/coco.py (FastCOCOEvaluator swaps coco_evaluation.COCOeval_opt)"
    with assumption(
        "coco_evaluation.COCOeval_opt exists (pycocotools' COCOeval without detectron2._C)", where
    ):
        assert isinstance(coco_evaluation.COCOeval_opt, type)
        assert hasattr(coco_evaluation, "COCOeval")
    with assumption(
        "COCOEvaluator.__init__ (use_fast_impl) compares the module's COCOeval_opt with "
        "COCOeval when constructed, and evaluation passes the module's COCOeval_opt as "
        "cocoeval_fn when use_fast_impl; COCOEvaluator.evaluate(img_ids=None)",
        where,
    ):
        assert "use_fast_impl" in params(COCOEvaluator.__init__)
        assert params(COCOEvaluator.evaluate) == ["self", "img_ids"]
        assert "COCOeval_opt is COCOeval" in inspect.getsource(COCOEvaluator.__init__)
        source = inspect.getsource(COCOEvaluator._eval_predictions)
        assert "cocoeval_fn=COCOeval_opt if self._use_fast_impl else COCOeval" in source
        assert "cocoeval_fn" in params(coco_evaluation._evaluate_predictions_on_coco)


# ------------------------------------------------------------------------------------------------
# Checkpointer internals.


def test_checkpointer_protected_methods(tmp_path):
    where = (
        "ssdet/checkpoint/checkpointer.py (SsdetCheckpointer) and ssdet/engine/pseudo_labeling.py "
        "(_TeacherCheckpointer._load_model)"
    )
    read = []

    class Recording(DetectionCheckpointer):
        def _torch_load(self, f):
            read.append(f)
            return super()._torch_load(f)

    model = nn.Linear(2, 1)
    path = str(tmp_path / "weights.pth")
    torch.save({"model": {"weight": torch.zeros(1, 2)}}, path)
    with assumption(
        "DetectionCheckpointer.load(path, checkpointables=None) reads a .pth through "
        "self._load_file(filename), which reads the file with self._torch_load(f); "
        "_load_model(checkpoint) returns the incompatible keys with .missing_keys",
        where,
    ):
        assert params(DetectionCheckpointer.load)[:2] == ["self", "path"]
        assert params(Checkpointer.load) == ["self", "path", "checkpointables"]
        assert params(DetectionCheckpointer._load_file) == ["self", "filename"]
        assert params(DetectionCheckpointer._torch_load) == ["self", "f"]
        assert params(DetectionCheckpointer._load_model) == ["self", "checkpoint"]
        checkpointer = Recording(model, str(tmp_path))
        checkpointer.load(path)
        assert read == [path]
        incompatible = checkpointer._load_model({"model": {"weight": torch.zeros(1, 2)}})
        assert list(incompatible.missing_keys) == ["bias"]
        assert hasattr(checkpointer, "logger") and checkpointer.model is model


def test_checkpointer_save_format_and_tag(tmp_path):
    with assumption(
        "Checkpointer.save(name, **kwargs) writes {'model', each checkpointable's state dict, "
        "kwargs} to <save_dir>/<name>.pth and tags it with tag_last_checkpoint(basename) in "
        "'last_checkpoint'; get_checkpoint_file() of an empty tag is save_dir + '/'",
        "ssdet/checkpoint/checkpointer.py (SsdetCheckpointer.save, get_checkpoint_file)",
    ):
        model = nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        checkpointer = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer)
        assert checkpointer.save_to_disk is True
        assert set(checkpointer.checkpointables) == {"optimizer"}
        assert params(DetectionCheckpointer.tag_last_checkpoint) == [
            "self",
            "last_filename_basename",
        ]
        checkpointer.save("model_0000003", iteration=3)
        saved = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
        assert set(saved) == {"model", "optimizer", "iteration"}, set(saved)
        assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
        assert checkpointer.has_checkpoint()
        assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000003.pth")
        (tmp_path / "last_checkpoint").write_text("")
        assert checkpointer.has_checkpoint()
        assert os.path.basename(checkpointer.get_checkpoint_file()) == ""


def test_a_hook_stops_training_with_a_base_exception_after_a_step(toy_cfg, caplog):
    from ssdet.engine.interrupt import StopOnSignal, TrainingInterrupted, add_stop_on_signal

    class SignalAtStep1(hooks.HookBase):
        def after_step(self):
            if self.trainer.iter == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    class Stoppable(_ToyTrainer):
        evaluations = 0

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            cls.evaluations += 1
            return cls.eval_results

        def build_hooks(self):
            return [SignalAtStep1(), *add_stop_on_signal(super().build_hooks())]

    toy_cfg.SOLVER.MAX_ITER = 4
    before = signal.getsignal(signal.SIGTERM)
    with assumption(
        "DefaultTrainer's hooks include an EvalHook; TrainerBase.train logs and re-raises only an "
        "Exception, runs after_train in a finally, and EvalHook.after_train evaluates only when "
        "iter + 1 >= max_iter",
        "ssdet/engine/interrupt.py (StopOnSignal raises TrainingInterrupted, a BaseException)",
    ):
        trainer = Stoppable(toy_cfg)
        stop = [h for h in trainer._hooks if isinstance(h, StopOnSignal)]
        assert len(stop) == 1
        assert isinstance(trainer._hooks[trainer._hooks.index(stop[0]) + 1], hooks.EvalHook)
        with pytest.raises(TrainingInterrupted) as stopped:
            trainer.train()
        assert stopped.value.exit_code == 143
        assert trainer.iter == 1 and Stoppable.evaluations == 0
        assert signal.getsignal(signal.SIGTERM) is before
        assert "Exception during training" not in caplog.text
        with open(os.path.join(toy_cfg.OUTPUT_DIR, "last_checkpoint")) as f:
            assert f.read() == "model_0000001.pth"
