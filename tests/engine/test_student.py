"""Tests of the student's step, loss normalization, checkpointed state and trainer."""

import itertools
import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import launch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssdet.data.mini_world import MINI_COCO_CLASSES
from ssdet.data.mixed import MixedBatch
from ssdet.engine.pseudo_loss import PseudoLossWeighting
from ssdet.engine.student import (
    AMPStudentTrainer,
    CPUAutocastStudentTrainer,
    SimpleStudentTrainer,
    StudentTrainer,
)
from ssdet.modeling import DropPath
from ssdet.utils.errors import InputError

from ..data.test_mixed import make_pseudo_store, student_cfg

# -------------------------------------------------------------------------------------------------
# The step, on a toy model
# -------------------------------------------------------------------------------------------------


class ToyDetector(nn.Module):
    """Returns a loss dict from each image's "x"; an image's "nan" makes its batch's loss NaN."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))

    def forward(self, images: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack([d["x"] for d in images])
        loss_cls = (x * self.w).sum()
        if any(d.get("nan") for d in images):
            loss_cls = loss_cls * float("nan")
        return {"loss_cls": loss_cls, "loss_box_reg": self.w.pow(2).sum()}


def toy_batches(pseudo_nan_at=None):
    for i in itertools.count():
        yield MixedBatch(
            [{"x": torch.tensor([1.0, 0.0])}] * 2,
            [{"x": torch.tensor([0.0, 1.0]), "nan": i == pseudo_nan_at}] * 2,
        )


def toy_trainer(cls=SimpleStudentTrainer, data=None, **kwargs):
    model = ToyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weighting = PseudoLossWeighting("moving_average", pseudo_weight=0.5, momentum=0.9)
    return cls(model, data or toy_batches(), optimizer, loss_weighting=weighting, **kwargs)


def run(trainer, steps: int, storage: EventStorage, start: int = 0) -> None:
    for it in range(start, start + steps):
        trainer.iter = it
        storage.iter = it
        trainer.run_step()


def test_step_logs_each_part_and_applies_the_weighted_gradient():
    trainer = toy_trainer()
    w = trainer.model.w.detach().clone()
    with EventStorage() as storage:
        run(trainer, 1, storage)
        latest = {k: v for k, (v, _) in storage.latest().items()}
    # L_h = 2 * w0 + |w|^2 = 7, L_p = 2 * w1 + |w|^2 = 9; first step: weight = 0.5 * 7 / 9.
    weight = 0.5 * 7 / 9
    expected = {
        "human/loss_cls": 2.0,
        "human/loss_box_reg": 5.0,
        "pseudo/loss_cls": 4.0,
        "pseudo/loss_box_reg": 5.0,
        "loss_human": 7.0,
        "loss_pseudo": 9.0,
        "loss_human_avg": 7.0,
        "loss_pseudo_avg": 9.0,
        "pseudo_loss_weight": weight,
        "total_loss": 7 + weight * 9,
    }
    for key, value in expected.items():
        assert latest[key] == pytest.approx(value), key
    assert "data_time" in latest
    grad_h = torch.tensor([2.0, 0.0]) + 2 * w
    grad_p = torch.tensor([0.0, 2.0]) + 2 * w
    assert torch.allclose(trainer.model.w.detach(), w - 0.1 * (grad_h + weight * grad_p))


def test_non_finite_loss_names_the_part_and_skips_the_update():
    trainer = toy_trainer(data=toy_batches(pseudo_nan_at=1))
    with EventStorage() as storage:
        run(trainer, 1, storage)
        w = trainer.model.w.detach().clone()
        with pytest.raises(
            FloatingPointError, match="pseudo-labeled images.*iteration 1.*loss_cls"
        ):
            run(trainer, 1, storage, start=1)
    assert torch.equal(trainer.model.w.detach(), w)


def test_trainer_state_holds_the_averages():
    trainer = toy_trainer()
    with EventStorage() as storage:
        run(trainer, 3, storage)
    state = trainer.state_dict()
    assert {"optimizer", "loss_weighting", "loss_normalizers"} <= set(state)
    resumed = toy_trainer()
    resumed.load_state_dict(state)
    assert torch.equal(resumed.loss_weighting.averages, trainer.loss_weighting.averages)


class MeanToyDetector(ToyDetector):
    """ToyDetector with its loss a mean over the images, as a detector's normalized losses."""

    def forward(self, images: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack([d["x"] for d in images])
        return {"loss_cls": (x * self.w).sum(dim=1).mean(), "loss_box_reg": self.w.pow(2).sum()}


def test_two_accumulated_mixed_batches_equal_one_batch_of_both():
    g = torch.Generator().manual_seed(0)

    def part(num):
        return [{"x": torch.randn(2, generator=g)} for _ in range(num)]

    batches = [MixedBatch(part(2), part(2)) for _ in range(4)]
    merged = [
        MixedBatch(a.human + b.human, a.pseudo + b.pseudo) for a, b in (batches[0:2], batches[2:4])
    ]
    results = []
    for data, steps in ((batches, 2), (merged, 1)):
        model = MeanToyDetector()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        trainer = SimpleStudentTrainer(
            model,
            iter(data),
            optimizer,
            loss_weighting=PseudoLossWeighting("none", pseudo_weight=0.5),
            accumulation_steps=steps,
        )
        with EventStorage() as storage:
            run(trainer, 2, storage)
            logged = {k: v for k, (v, _) in storage.latest().items() if "time" not in k}
        results.append((model.w.detach(), logged))
    (w_accumulated, logged_accumulated), (w_merged, logged_merged) = results
    assert torch.allclose(w_accumulated, w_merged, atol=1e-6)
    assert logged_accumulated.keys() == logged_merged.keys()
    for key, value in logged_merged.items():
        assert logged_accumulated[key] == pytest.approx(value, rel=1e-5), key


def labeled(classes: list[int]) -> dict:
    instances = Instances((8, 8))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return {"x": torch.tensor([0.0, 1.0]), "instances": instances}


def test_pseudo_label_counts_per_image_and_class_over_each_period():
    # Per step: pseudo images with 2 person boxes and an ignore region, and 1 dog box.
    batches = itertools.repeat(
        MixedBatch(
            [{"x": torch.tensor([1.0, 0.0])}],
            [
                labeled([0, 0, -1]),
                labeled([2]),
            ],
        )
    )
    trainer = toy_trainer(data=batches, class_names=["person", "car", "dog"], stats_period=3)
    trainer.max_iter = 5
    with EventStorage() as storage:
        run(trainer, 5, storage)
        history = {
            name: [(it, v) for v, it in storage.history(name).values()]
            for name in storage.histories()
            if name.startswith("pseudo_labels/")
        }
    # A period of 3 steps (iterations 0-2), then the last 2 (iterations 3-4).
    assert history == {
        "pseudo_labels/images": [(2, 6), (4, 4)],
        "pseudo_labels/boxes_per_image": [(2, 1.5), (4, 1.5)],
        "pseudo_labels/boxes/person": [(2, 6), (4, 4)],
        "pseudo_labels/boxes/car": [(2, 0), (4, 0)],
        "pseudo_labels/boxes/dog": [(2, 3), (4, 2)],
    }
    # Written as they are, not smoothed over a window.
    assert storage.latest_with_smoothing_hint(20)["pseudo_labels/boxes/dog"][0] == 2


def test_pseudo_cls_target_errors():
    with pytest.raises(InputError, match="valid: hard, score"):
        toy_trainer(pseudo_cls_target="soft")
    with pytest.raises(InputError, match="'score' weighs RetinaNet's focal loss.*ToyDetector"):
        toy_trainer(pseudo_cls_target="score")


def test_ignore_regions_need_a_retinanet(tmp_path):
    cfg = student_cfg(OUTPUT_DIR=str(tmp_path))
    cfg.SSDET.PSEUDO_LABELS.IGNORE_SCORE_THRESH = 0.2
    StudentTrainer.check_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 10
    with pytest.raises(InputError, match="needs a RetinaNet detector"):
        StudentTrainer.check_config(cfg)


def test_amp_step_composes_with_the_grad_scaler(monkeypatch):
    # CPU-only here: autocast("cuda") is inert on CPU tensors and the disabled scaler passes the
    # loss through; what is checked is the AMP trainer's plumbing and state.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    trainer = toy_trainer(AMPStudentTrainer, grad_scaler=scaler)
    with EventStorage() as storage:
        run(trainer, 2, storage)
        assert storage.latest()["loss_pseudo"][0] > 0
    assert {"grad_scaler", "loss_weighting", "optimizer"} <= set(trainer.state_dict())


class MatmulToyDetector(ToyDetector):
    """ToyDetector through a matmul, which autocast runs in its low precision: records the dtype."""

    def forward(self, images: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack([d["x"] for d in images])
        scores = x @ self.w.unsqueeze(1)
        self.dtypes = [*getattr(self, "dtypes", []), scores.dtype]
        return {"loss_cls": scores.float().sum(), "loss_box_reg": self.w.pow(2).sum()}


def test_cpu_autocast_step_runs_forwards_in_bfloat16_and_updates_float32_weights():
    trainer = toy_trainer(CPUAutocastStudentTrainer)
    trainer.model = MatmulToyDetector()
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    with EventStorage() as storage:
        run(trainer, 1, storage)
    # One step, two forwards (human and pseudo part), both in bfloat16.
    assert trainer.model.dtypes == [torch.bfloat16, torch.bfloat16]
    assert trainer.model.w.dtype == torch.float32
    assert not torch.equal(trainer.model.w.detach(), torch.tensor([1.0, 2.0]))


def _ddp_worker(output_dir: str) -> None:
    rank = comm.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(ToyDetector())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Each rank sees different images, so the ranks' losses differ.
    batch = MixedBatch(
        [{"x": torch.tensor([1.0 + rank, 0.0])}] * 2, [{"x": torch.tensor([0.0, 1.0 + rank])}] * 2
    )
    trainer = SimpleStudentTrainer(model, itertools.repeat(batch), optimizer)
    with EventStorage() as storage:
        run(trainer, 2, storage)
        logged = {k: v for k, (v, _) in storage.latest().items()}
    torch.save(
        {
            "w": model.module.w.detach(),
            "averages": trainer.loss_weighting.averages,
            "logged": logged,
        },
        os.path.join(output_dir, f"rank{rank}.pt"),
    )


def test_two_processes_share_gradients_and_averages(tmp_path):
    """DDP (gloo, CPU): two forwards feed one backward; the loss averages agree across ranks."""
    launch(_ddp_worker, 2, dist_url="auto", args=(str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert torch.equal(ranks[0]["w"], ranks[1]["w"])
    assert torch.equal(ranks[0]["averages"], ranks[1]["averages"])
    # Expected, with the losses and gradients averaged over the ranks (x = 1 + rank, mean 1.5):
    # L_h = 2 x w0 + |w|^2, L_p = 2 x w1 + |w|^2, and the default alpha 1, momentum 0.99.
    w, averages = torch.tensor([1.0, 2.0]), None
    for _ in range(2):
        losses = torch.stack([3 * w[0] + w.pow(2).sum(), 3 * w[1] + w.pow(2).sum()])
        averages = losses if averages is None else 0.99 * averages + 0.01 * losses
        weight = averages[0] / averages[1]
        grad = torch.tensor([3.0, 0.0]) + 2 * w + weight * (torch.tensor([0.0, 3.0]) + 2 * w)
        logged_human = losses[0]
        w = w - 0.1 * grad
    assert torch.allclose(ranks[0]["w"], w)
    assert torch.allclose(ranks[0]["averages"], averages)
    # Only the main process logs: the mean over the ranks.
    assert ranks[0]["logged"]["loss_human"] == pytest.approx(logged_human.item())
    assert "loss_human" not in ranks[1]["logged"]


# -------------------------------------------------------------------------------------------------
# RetinaNet: one foreground-count normalizer per part
# -------------------------------------------------------------------------------------------------


def retinanet_batch(num_images: int, boxes_per_image: int) -> list[dict]:
    images = []
    for i in range(num_images):
        instances = Instances((64, 64))
        xy = (torch.arange(boxes_per_image, dtype=torch.float32)[:, None] * 6 + i).expand(-1, 2)
        instances.gt_boxes = Boxes(torch.cat([xy, xy + 20], dim=1))
        instances.gt_classes = torch.zeros(boxes_per_image, dtype=torch.int64)
        images.append({"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "instances": instances})
    return images


def test_retinanet_parts_keep_their_own_loss_normalizer():
    cfg = student_cfg()
    model = build_model(cfg)
    batch = MixedBatch(retinanet_batch(2, 6), retinanet_batch(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = SimpleStudentTrainer(model, itertools.repeat(batch), optimizer)
    with EventStorage() as storage:
        run(trainer, 1, storage)
    normalizers = trainer.state_dict()["loss_normalizers"]
    # Detectron2's DenseDetector keeps the average in this attribute (checked for upgrades).
    assert model.loss_normalizer == normalizers["pseudo"]
    # Each part's average moves from RetinaNet's initial 100 towards its own foreground count.
    assert 100 > normalizers["human"] > normalizers["pseudo"]


def _frozen_bn_retinanet(cfg):
    # FrozenBN: batch statistics would differ between one batch of 4 and two of 2 by design.
    from detectron2.layers import FrozenBatchNorm2d

    return FrozenBatchNorm2d.convert_frozen_batchnorm(build_model(cfg))


def _count_backbone_calls(model) -> list[int]:
    calls = [0]
    model.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _check_one_forward_equals_two(cfg, pseudo_cls_target: str, loss_names: set[str]) -> None:
    """One forward of both parts logs, normalizes and updates exactly as two forwards."""
    torch.manual_seed(0)
    human, pseudo = retinanet_batch(2, 6), retinanet_batch(2, 1)
    for image in human + pseudo:
        image["image"] = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    for image in pseudo:
        image["instances"].gt_scores = torch.full((1,), 0.6)
    batch = MixedBatch(human, pseudo)
    one = _frozen_bn_retinanet(cfg)
    two = _frozen_bn_retinanet(cfg)
    two.load_state_dict(one.state_dict())
    results = {}
    for name, model, one_forward in (("one", one, True), ("two", two, False)):
        calls = _count_backbone_calls(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        trainer = SimpleStudentTrainer(
            model,
            itertools.repeat(batch),
            optimizer,
            one_forward=one_forward,
            pseudo_cls_target=pseudo_cls_target,
        )
        with EventStorage() as storage:
            run(trainer, 2, storage)  # the 2nd step uses the 1st step's averages and normalizers
        logged = {k: v for k, (v, _) in storage.latest().items() if "time" not in k}
        results[name] = (calls[0], logged, trainer.state_dict()["loss_normalizers"])
        # The instance is left as it was: its class's forward_training again.
        assert "forward_training" not in vars(model)
    assert results["one"][0] == 2 and results["two"][0] == 4  # backbone passes in 2 steps
    assert set(results["one"][1]) == set(results["two"][1])
    assert loss_names <= set(results["one"][1])
    for key, value in results["two"][1].items():
        assert results["one"][1][key] == pytest.approx(value, rel=1e-4), key
    assert results["one"][2] == pytest.approx(results["two"][2])
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("pseudo_cls_target", ["hard", "score"])
def test_one_forward_gives_each_part_the_losses_of_its_own_forward(pseudo_cls_target):
    names = {"human/loss_cls", "pseudo/loss_box_reg"}
    _check_one_forward_equals_two(student_cfg(), pseudo_cls_target, names)


def test_fcos_one_forward_gives_each_part_the_losses_of_its_own_forward():
    # FCOS (ssdet/modeling/fcos.py) is a DenseDetector with its own loss names and normalizer.
    cfg = student_cfg(**{"MODEL.META_ARCHITECTURE": "SsdetFCOS"})
    names = {"human/loss_fcos_cls", "human/loss_fcos_ctr", "pseudo/loss_fcos_loc"}
    _check_one_forward_equals_two(cfg, "hard", names)


def test_fcos_refuses_the_score_weighted_target():
    model = build_model(student_cfg(**{"MODEL.META_ARCHITECTURE": "SsdetFCOS"}))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(InputError, match="RetinaNet"):
        SimpleStudentTrainer(model, iter([]), optimizer, pseudo_cls_target="score")


def test_parts_of_different_aspect_groups_get_their_own_forwards():
    cfg = student_cfg()
    model = build_model(cfg)
    calls = _count_backbone_calls(model)
    portrait = retinanet_batch(2, 1)
    for image in portrait:
        image["image"] = torch.zeros(3, 96, 64, dtype=torch.uint8)
        image["instances"] = Instances((96, 64), **image["instances"].get_fields())
    landscape = retinanet_batch(2, 1)
    for image in landscape:
        image["image"] = torch.zeros(3, 64, 96, dtype=torch.uint8)
        image["instances"] = Instances((64, 96), **image["instances"].get_fields())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = SimpleStudentTrainer(
        model, itertools.repeat(MixedBatch(portrait, landscape)), optimizer
    )
    with EventStorage() as storage:
        run(trainer, 1, storage)
        assert {"human/loss_cls", "pseudo/loss_cls"} <= set(storage.latest())
    assert calls[0] == 2


# -------------------------------------------------------------------------------------------------
# StudentTrainer end to end on the tiny world
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pseudo_store(tiny_world, tmp_path_factory):
    return make_pseudo_store(tmp_path_factory.mktemp("student-pseudo") / "store")


def test_student_trainer_trains_logs_checkpoints_and_resumes(pseudo_store, tmp_path):
    cfg = student_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SSDET.PSEUDO_LABELS.STORE = pseudo_store
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.DATASETS.TEST = ()
    trainer = StudentTrainer(cfg)
    assert isinstance(trainer._trainer, SimpleStudentTrainer)
    assert any(isinstance(m, DropPath) for m in trainer.model.modules())
    trainer.resume_or_load(resume=False)
    trainer.train()
    averages = trainer._trainer.loss_weighting.averages.tolist()

    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    keys = set().union(*records)
    assert {"loss_human", "loss_pseudo", "pseudo_loss_weight", "total_loss"} <= keys
    assert {"human/loss_cls", "pseudo/loss_box_reg", "loss_human_avg", "loss_pseudo_avg"} <= keys

    # The student checkpoint loads into a stock Detectron2 model, without the noise.
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert set(checkpoint["model"]) == set(build_model(cfg).state_dict())
    assert checkpoint["trainer"]["_trainer"]["loss_weighting"]["averages"] == pytest.approx(
        averages
    )

    cfg.SOLVER.MAX_ITER = 3
    resumed = StudentTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert resumed._trainer.loss_weighting.averages.tolist() == pytest.approx(averages)
    resumed.train()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(tmp_path / "model_final.pth"))


def test_student_trainer_input_errors(tiny_world, tmp_path):
    cfg = student_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    with pytest.raises(InputError, match="SSDET.PSEUDO_LABELS.STORE is empty"):
        StudentTrainer(cfg)
    cfg.TEST.PRECISE_BN.ENABLED = True
    with pytest.raises(InputError, match="PRECISE_BN"):
        StudentTrainer(cfg)
    cfg.TEST.PRECISE_BN.ENABLED = False
    cfg.SSDET.SELF_TRAINING.LOSS_NORMALIZATION = "mean"
    with pytest.raises(InputError, match="valid: none, moving_average"):
        StudentTrainer(cfg)


def test_student_trainer_with_the_peers_loss_knobs(pseudo_store, tmp_path):
    cfg = student_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SSDET.PSEUDO_LABELS.STORE = pseudo_store
    cfg.SSDET.SELF_TRAINING.PSEUDO_CLS_TARGET = "score"
    cfg.SSDET.SELF_TRAINING.PSEUDO_LOSS_TERM_WEIGHTS = [["loss_box_reg", 0.0]]
    cfg.SSDET.SOLVER.GRAD_ACCUM_STEPS = 2
    cfg.SOLVER.MAX_ITER = 2
    cfg.DATASETS.TEST = ()
    trainer = StudentTrainer(cfg)
    assert trainer._trainer.accumulation_steps == 2
    assert trainer._trainer.pseudo_cls_target == "score"
    trainer.resume_or_load(resume=False)
    trainer.train()
    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    last = records[-1]
    # 2 steps of 2 batches of 2 pseudo-labeled images; one kept box per stored image, which the
    # S4 policy's crop may cut away.
    assert last["pseudo_labels/images"] == 8
    assert 0 < last["pseudo_labels/boxes_per_image"] <= 1
    per_class = {k: v for k, v in last.items() if k.startswith("pseudo_labels/boxes/")}
    assert set(per_class) == {f"pseudo_labels/boxes/{name}" for name in MINI_COCO_CLASSES}
    assert sum(per_class.values()) == last["pseudo_labels/boxes_per_image"] * 8
    assert last["loss_pseudo"] == pytest.approx(last["pseudo/loss_cls"], rel=1e-4)
