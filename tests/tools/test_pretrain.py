"""tools/pretrain.py on the tiny world: a few iterations of each method, the exported backbone,
the run's record, resuming, and bad input."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from ssdet.checkpoint import load_backbone_checkpoint
from ssdet.checkpoint.backbone_init import init_backbone
from ssdet.config import add_ssdet_config
from ssdet.modeling.backbone import build_ssdet_resnet_backbone
from ssdet.utils.errors import InputError

from ..conftest import REPO, tiny_imagenet_counts

INSTANT = os.path.join(REPO, "configs", "pretrain", "pretrain_instant_test.yaml")
DETECTOR = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")
TOOL = os.path.join(REPO, "tools", "pretrain.py")


def load_tool():
    spec = importlib.util.spec_from_file_location("pretrain_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def pretrain(*argv: str) -> dict:
    """Run the tool in this process (one process needs no launch) and return its results."""
    return tool.main(tool.parse_args(["--config", INSTANT, *argv]))


@pytest.fixture(scope="module")
def supervised_run(tiny_world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("supervised"))
    return out, pretrain("OUTPUT_DIR", out)


@pytest.fixture(scope="module")
def simclr_run(tiny_world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("simclr"))
    results = pretrain(
        "--method", "simclr", "OUTPUT_DIR", out,
        "SSDET.PRETRAIN.LINEAR_PROBE.RANDOM_INIT_BASELINE", "True",
        "SSDET.PRETRAIN.LINEAR_PROBE.TRAIN_IMAGES_PER_CLASS", "4",
    )  # fmt: skip
    return out, results


def detector_backbone():
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(DETECTOR)
    return build_ssdet_resnet_backbone(cfg, ShapeSpec(channels=3))


def test_supervised_backbone_checkpoint_loads_strict_into_the_detector(supervised_run):
    out, _ = supervised_run
    checkpoint = torch.load(os.path.join(out, "backbone_final.pth"), weights_only=True)
    assert set(checkpoint) == {"format", "version", "arch", "method", "model", "extra"}
    assert checkpoint["format"] == "ssdet-backbone" and checkpoint["version"] == 1
    assert checkpoint["extra"]["input_format"] == "BGR"
    # The format's own reader accepts it.
    assert load_backbone_checkpoint(os.path.join(out, "backbone_final.pth"))["arch"]["depth"] == 18
    assert checkpoint["method"] == "supervised"
    assert checkpoint["arch"] == {"depth": 18, "stem_out_channels": 16, "res2_out_channels": 16}
    assert "stem.conv1.weight" in checkpoint["model"]
    assert "res2.0.conv1.norm.running_mean" in checkpoint["model"]
    backbone = detector_backbone()
    backbone.load_state_dict(checkpoint["model"], strict=True)
    # The exported weights are the trained ones, not a fresh initialization.
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    trained = final["backbone.res5.1.conv2.weight"]
    assert torch.equal(trained, checkpoint["model"]["res5.1.conv2.weight"])
    assert not torch.equal(trained, detector_backbone().res5[1].conv2.weight)


def test_backbone_checkpoint_initializes_the_detector(supervised_run):
    """SSDET.INIT IMAGENET with the exported file: every backbone tensor is loaded."""
    out, _ = supervised_run
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(DETECTOR)
    cfg.MODEL.DEVICE = "cpu"
    cfg.SSDET.INIT = "IMAGENET"
    cfg.SSDET.INIT_WEIGHTS = os.path.join(out, "backbone_final.pth")
    detector = build_model(cfg)
    record = init_backbone(detector, cfg)
    assert record["method"] == "supervised"
    assert record["missing_keys"] == [] and record["unused_keys"] == []
    checkpoint = torch.load(cfg.SSDET.INIT_WEIGHTS, weights_only=True)["model"]
    loaded = detector.backbone.bottom_up.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in checkpoint.items())


def test_supervised_metrics_record(supervised_run):
    out, results = supervised_run
    record = json.load(open(os.path.join(out, "pretrain_metrics.json")))
    assert record["method"] == "supervised" and record["dataset"] == "mini_imagenet"
    assert record["num_classes"] == 14 and record["num_val_images"] == sum(
        tiny_imagenet_counts("val")
    )
    assert 0.0 <= record["top1"] <= 100.0 and record["top1"] == round(results["top1"], 2)
    # Chance is the majority class's share of the val images.
    val = tiny_imagenet_counts("val")
    assert record["chance_top1"] == pytest.approx(100 * max(val) / sum(val), abs=0.01)
    assert record["epochs"] == pytest.approx(4 * 8 / sum(tiny_imagenet_counts("train")), abs=0.01)
    assert record["seed"] == 0 and record["wall_time_s"] > 0
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    # Detectron2's metrics: the training loss and top-1 after every evaluation period.
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert any("total_loss" in r for r in rows)
    assert [r["iteration"] for r in rows if "top1" in r] == [1, 4]


def test_simclr_run_and_linear_probe(simclr_run):
    out, results = simclr_run
    assert 0.0 <= results["linear_probe_top1"] <= 100.0
    assert 0.0 <= results["linear_probe_top1_random_init"] <= 100.0
    record = json.load(open(os.path.join(out, "pretrain_metrics.json")))
    assert record["method"] == "simclr"
    assert record["linear_probe_top1"] == round(results["linear_probe_top1"], 2)
    checkpoint = torch.load(os.path.join(out, "backbone_final.pth"), weights_only=True)
    assert checkpoint["method"] == "simclr"
    assert not any(k.startswith(("projection", "classifier")) for k in checkpoint["model"])
    detector_backbone().load_state_dict(checkpoint["model"], strict=True)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert any("total_loss" in r for r in rows)
    # The probe is fitted on the first 4 train images of each class (all of a class with fewer).
    num_probe = sum(min(4, n) for n in tiny_imagenet_counts("train"))
    num_val = sum(tiny_imagenet_counts("val"))
    log = open(os.path.join(out, "log.txt")).read()
    assert f"Linear probe on {num_probe} train / {num_val} val images" in log


def test_simclr_loss_falls_on_the_tiny_world(tiny_world, tmp_path):
    """A SimCLR that learns picks each view's pair out of the batch better and better: in 150
    iterations of 32 images (63 candidates per view) its loss falls well below the ln(63) = 4.14
    of embeddings that know nothing (measured: 4.12 at iteration 19, 3.76 at 149). A run whose
    positives were wrong, or whose backbone did not train, would stay near ln(63)."""
    pretrain(
        "--method", "simclr", "OUTPUT_DIR", str(tmp_path),
        "SOLVER.MAX_ITER", "150", "SOLVER.IMS_PER_BATCH", "32", "SOLVER.WARMUP_ITERS", "10",
        "SOLVER.BASE_LR", "0.1", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
        "SSDET.PRETRAIN.CROP_SCALE", "(0.5, 1.0)",
    )  # fmt: skip
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert len(losses) >= 5
    assert losses[0] > math.log(63) - 0.1
    assert losses[-1] < losses[0] - 0.2 and losses[-1] < math.log(63) - 0.25


def test_interrupted_run_resumes(tiny_world, tmp_path):
    out = str(tmp_path)
    # A run stopped after 2 of 4 iterations: its last checkpoint is at iteration 2.
    pretrain("OUTPUT_DIR", out, "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0")
    pretrain("--resume", "OUTPUT_DIR", out, "TEST.EVAL_PERIOD", "0")
    assert "Starting training from iteration 2" in open(os.path.join(out, "log.txt")).read()
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 3
    assert json.load(open(os.path.join(out, "pretrain_metrics.json")))["iterations"] == 4


def test_amp_on_a_cpu_trains(tiny_world, tmp_path):
    """SOLVER.AMP.ENABLED (the mini detector configs' default) on a CPU: bfloat16 autocast or
    float32, never Detectron2's CUDA-only AMPTrainer."""
    out = str(tmp_path)
    pretrain("OUTPUT_DIR", out, "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0",
             "SOLVER.AMP.ENABLED", "True")  # fmt: skip
    assert json.load(open(os.path.join(out, "pretrain_metrics.json")))["iterations"] == 2
    assert os.path.isfile(os.path.join(out, "backbone_final.pth"))


def test_bad_input(tiny_world, tmp_path):
    with pytest.raises(InputError, match="neither a registered dataset nor a folder"):
        pretrain("--dataset", str(tmp_path / "missing"), "OUTPUT_DIR", str(tmp_path / "a"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="no class sub-folders"):
        pretrain("--dataset", str(tmp_path / "empty"), "OUTPUT_DIR", str(tmp_path / "b"))
    # Through the command line: one "error:" line, no traceback.
    proc = subprocess.run(
        [sys.executable, TOOL, "--config", INSTANT, "--method", "byol"]
        + ["OUTPUT_DIR", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("error: Unknown pre-training method 'byol'")
    )
    assert "Traceback" not in proc.stderr
