"""Joint training end to end: a few iterations of the supervised trainer and of the student
("all three" without the init), the exported detector, and the config errors."""

import itertools
import json
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from ssdet.checkpoint import STOCK_CONFIG
from ssdet.config import add_ssdet_config
from ssdet.data.joint import ClassificationBatch, JointBatch
from ssdet.data.mixed import MixedBatch
from ssdet.engine import SimpleStudentTrainer, StudentTrainer, Trainer
from ssdet.engine.joint import DETECTOR_CHECKPOINT
from ssdet.engine.pseudo_loss import PseudoLossWeighting
from ssdet.modeling import DropPath, JointRetinaNet
from ssdet.utils.errors import InputError

from ..conftest import REPO
from ..data.test_mixed import make_pseudo_store

CONFIGS = os.path.join(REPO, "configs", "mini")


def load_cfg(name: str, output_dir, **overrides):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.DATASETS.TEST = ()
    cfg.merge_from_list([str(x) for kv in overrides.items() for x in kv])
    return cfg


def metric_keys(output_dir) -> set[str]:
    records = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.json"))]
    return set().union(*records)


def check_exported_detector(cfg, model: JointRetinaNet) -> None:
    """The exported checkpoint has no head and loads strict into the plain detector."""
    checkpoint = torch.load(os.path.join(cfg.OUTPUT_DIR, DETECTOR_CHECKPOINT), weights_only=True)
    weights = checkpoint["model"]
    assert not any(k.startswith("joint_head") for k in weights)
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    plain = build_model(plain_cfg)
    assert type(plain).__name__ == "RetinaNet"
    plain.load_state_dict(weights, strict=True)
    trained = model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in weights.items())
    # The resumable checkpoint keeps the head.
    final = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=False)
    assert "joint_head.linear.weight" in final["model"]
    # The config for stock Detectron2 loads the detector, not the checkpoint with the head.
    stock = get_cfg()
    stock.merge_from_file(os.path.join(cfg.OUTPUT_DIR, STOCK_CONFIG))
    assert stock.MODEL.WEIGHTS == os.path.join(cfg.OUTPUT_DIR, DETECTOR_CHECKPOINT)
    assert stock.MODEL.META_ARCHITECTURE == "RetinaNet"


def test_joint_training_with_the_supervised_trainer(tiny_world, tmp_path):
    cfg = load_cfg("retinanet_R18_FPN_S1_joint_instant_test.yaml", tmp_path)
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, JointRetinaNet)
    head = trainer.model.joint_head.linear.weight.detach().clone()
    trainer.resume_or_load(resume=False)
    trainer.train()

    keys = metric_keys(tmp_path)
    assert {"loss_joint_cls", "loss_cls", "loss_box_reg", "total_loss"} <= keys
    assert "joint/cls_accuracy" in keys
    assert not torch.equal(trainer.model.joint_head.linear.weight, head)
    check_exported_detector(cfg, trainer.model)

    # The joint model evaluates as the plain detector: COCO box AP.
    cfg.DATASETS.TEST = ("mini_coco_val",)
    results = Trainer.test(cfg, trainer.model)
    assert "AP" in results["bbox"]


@pytest.fixture(scope="module")
def pseudo_store(tiny_world, tmp_path_factory):
    return make_pseudo_store(tmp_path_factory.mktemp("joint-pseudo") / "store")


def test_joint_training_with_the_student(pseudo_store, tmp_path):
    cfg = load_cfg(
        "retinanet_R18_FPN_S1_joint_student_instant_test.yaml",
        tmp_path,
        **{"SSDET.PSEUDO_LABELS.STORE": pseudo_store, "SOLVER.MAX_ITER": 2},
    )
    trainer = StudentTrainer(cfg)
    assert isinstance(trainer.model, JointRetinaNet)
    assert any(isinstance(m, DropPath) for m in trainer.model.modules())
    head = trainer.model.joint_head.linear.weight.detach().clone()
    trainer.resume_or_load(resume=False)
    trainer.train()

    keys = metric_keys(tmp_path)
    assert {"loss_joint_cls", "loss_human", "loss_pseudo", "total_loss"} <= keys
    assert {"human/loss_cls", "pseudo/loss_box_reg", "joint/cls_accuracy"} <= keys
    assert not torch.equal(trainer.model.joint_head.linear.weight, head)
    check_exported_detector(cfg, trainer.model)


class ToyJointDetector(nn.Module):
    """Detection loss from each image's "x"; a classification loss from a ClassificationBatch."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))

    def forward(self, inputs):
        if isinstance(inputs, ClassificationBatch):
            return {"loss_joint_cls": 3.0 * self.w[0] * inputs.images.float().mean()}
        x = torch.stack([d["x"] for d in inputs])
        return {"loss_cls": (x * self.w).sum()}


def test_student_step_adds_the_classification_loss_outside_the_pseudo_weighting():
    model = ToyJointDetector()
    batch = JointBatch(
        MixedBatch([{"x": torch.tensor([1.0, 0.0])}], [{"x": torch.tensor([0.0, 1.0])}]),
        ClassificationBatch(torch.full((2, 3, 4, 4), 2, dtype=torch.uint8), torch.zeros(2)),
    )
    weighting = PseudoLossWeighting("none", pseudo_weight=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleStudentTrainer(model, itertools.repeat(batch), optimizer, weighting)
    with EventStorage() as storage:
        trainer.iter = storage.iter = 0
        trainer.run_step()
        logged = {k: v for k, (v, _) in storage.latest().items()}
    # L_h = w0 = 1, L_p = w1 = 2, joint = 3 * w0 * 2 = 6: total = 1 + 0.5 * 2 + 6.
    assert logged["loss_joint_cls"] == pytest.approx(6.0)
    assert logged["loss_human"] == pytest.approx(1.0)
    assert logged["total_loss"] == pytest.approx(8.0)
    # d total / d w = (1 + 6, 0.5).
    assert torch.allclose(model.w.detach(), torch.tensor([1.0 - 0.7, 2.0 - 0.05]))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"SSDET.JOINT.NUM_CLASSES": 3}, "has 14 classes.*SSDET.JOINT.NUM_CLASSES is 3"),
        ({"SSDET.JOINT.DATASET": "no_such_set"}, "Unknown dataset 'no_such_set'"),
        ({"SSDET.JOINT.DATASET": "mini_coco_val"}, "not an ImageNet-layout folder"),
        (
            {"MODEL.META_ARCHITECTURE": "RetinaNet", "SSDET.JOINT.ENABLED": True},
            "SSDET.JOINT.ENABLED is replaced.*MODEL.META_ARCHITECTURE 'JointRetinaNet'",
        ),
    ],
)
def test_joint_config_errors(tiny_world, tmp_path, overrides, message):
    cfg = load_cfg("retinanet_R18_FPN_S1_joint_instant_test.yaml", tmp_path, **overrides)
    with pytest.raises(InputError, match=message):
        Trainer(cfg)


def _ddp_worker(output_dir: str) -> None:
    from detectron2.engine import SimpleTrainer
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    from ..modeling.test_joint import build_joint, classification_batch, detection_batch, joint_cfg

    rank = comm.get_rank()
    results = {}
    for name in ("supervised", "student"):
        model = DistributedDataParallel(build_joint(joint_cfg()), broadcast_buffers=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        # Each rank classifies different images, so unreduced head gradients would differ.
        torch.manual_seed(rank)
        classification = classification_batch()._replace(
            images=torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
        )
        if name == "supervised":
            batch = JointBatch(detection_batch(), classification)
            trainer = SimpleTrainer(model, itertools.repeat(batch), optimizer)
        else:
            batch = JointBatch(MixedBatch(detection_batch(), detection_batch(1)), classification)
            trainer = SimpleStudentTrainer(model, itertools.repeat(batch), optimizer)
        initial = model.module.joint_head.linear.weight.detach().clone()
        with EventStorage() as storage:
            trainer.iter = storage.iter = 0
            trainer.run_step()
        results[name] = {
            "initial": initial,
            "head": model.module.joint_head.linear.weight.detach(),
            "stem": model.module.backbone.bottom_up.stem.conv1.weight.detach(),
        }
    torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))


def test_two_processes_reduce_the_head_gradients(tiny_world, tmp_path):
    """DDP (gloo, CPU): the head is inside the wrapped model, so both ranks stay equal."""
    from detectron2.engine import launch

    launch(_ddp_worker, 2, dist_url="auto", args=(str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name in ("supervised", "student"):
        first, second = ranks[0][name], ranks[1][name]
        assert not torch.equal(first["head"], first["initial"]), name
        assert torch.equal(first["head"], second["head"]), name
        assert torch.equal(first["stem"], second["stem"]), name
