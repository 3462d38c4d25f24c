"""The instant test: tools/train_net.py trains a few dozen iterations on the tiny world, evaluates,
and records the run; bad input exits with a message, not a stack trace."""

import json
import os
import subprocess
import sys

import pytest

from ssdet.checkpoint import STOCK_CONFIG
from ssdet.engine.defaults import load_cfg

from ..checkpoint.test_stock_config import (
    check_same_predictions,
    ssdet_predictions,
    stock_predictions,
    val_image,
)
from ..conftest import REPO

INSTANT = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")


def train_net(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("instant"))
    proc = train_net("--config", INSTANT, "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_train_and_evaluate(trained):
    out, proc = trained
    metrics = json.load(open(os.path.join(out, "final_metrics.json")))
    box = metrics["results"]["mini_coco_val"]["bbox"]
    assert set(box) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(box[k] is None or 0.0 <= box[k] <= 100.0 for k in box)
    assert metrics["seed"] == 0 and metrics["wall_time_s"] > 0
    assert "| mini_coco_val |" in proc.stdout
    for f in ("config.yaml", "model_final.pth", "labeled_subset.json", "metrics.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    # ssdet's own log lines reach log.txt, once each.
    log = open(os.path.join(out, "log.txt")).read()
    assert log.count("SSDET.INIT RAND: the backbone keeps Detectron2's random") == 1
    # Detectron2's JSON metrics: one record per logging period with the RetinaNet losses.
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert len(losses) >= 2 and losses[-1] < losses[0], "training did not reduce the loss"


def test_setup_is_printed_once_and_logged_as_plain_text(trained):
    out, proc = trained
    for stream in (proc.stdout, open(os.path.join(out, "log.txt")).read()):
        assert stream.count("Environment info:") == 1
        assert stream.count("Running with full config:") == 1
    # Detectron2 highlights the config with terminal colour codes; log.txt is plain text.
    log = open(os.path.join(out, "log.txt")).read()
    assert "\x1b[" not in log
    assert "SSDET:\n  AUGMENT:" in log


def test_eval_only_reproduces_ap(trained):
    out, _ = trained
    model = os.path.join(out, "model_final.pth")
    eval_out = os.path.join(out, "eval")
    proc = train_net(
        "--config", INSTANT, "--eval-only", "MODEL.WEIGHTS", model, "OUTPUT_DIR", eval_out
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.load(open(os.path.join(out, "final_metrics.json")))["results"]
    again = json.load(open(os.path.join(eval_out, "final_metrics.json")))["results"]
    assert again["mini_coco_val"]["bbox"]["AP"] == pytest.approx(
        first["mini_coco_val"]["bbox"]["AP"], nan_ok=True
    )


def test_model_loads_in_stock_detectron2(trained, tmp_path):
    # The mini model is a narrow R18, which Detectron2's builder refuses: the config names the
    # any-width builder, whose Detectron2-only module is copied beside it.
    out, _ = trained
    config = os.path.join(out, STOCK_CONFIG)
    header = " ".join(line[2:].strip() for line in open(config) if line.startswith("# "))
    assert "RES2_OUT_CHANNELS 64 for R18/R34, and this R18 has RES2_OUT_CHANNELS 16" in header
    assert os.path.isfile(os.path.join(out, "any_width_resnet.py"))
    image = val_image()
    weights = os.path.join(out, "model_final.pth")
    ours = ssdet_predictions(load_cfg(os.path.join(out, "config.yaml")), weights, image)
    check_same_predictions(stock_predictions(config, image, tmp_path), ours)


def test_resume_of_finished_run_does_not_retrain(trained):
    out, _ = trained
    before = os.path.getmtime(os.path.join(out, "model_final.pth"))
    proc = train_net("--config", INSTANT, "--resume", "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.getmtime(os.path.join(out, "model_final.pth")) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["DATASETS.TEST", "('no_such_set',)"], "Unknown dataset 'no_such_set'"),
        (["MODEL.RETINANET.NUM_CLASSES", "80"], "has 10 classes but"),
        (["SSDET.NO_SUCH_KEY", "1"], "Bad config"),
    ],
)
def test_bad_input_is_a_message(tiny_world, tmp_path, args, message):
    proc = train_net("--config", INSTANT, "--eval-only", "OUTPUT_DIR", str(tmp_path), *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_trains_on_data_registered_from_the_command_line(tiny_world, tmp_path):
    # A new user's own COCO-format data: no Python, only SSDET.DATA.REGISTER.
    coco = os.path.join(tiny_world, "mini_coco")
    register = [
        [
            name,
            os.path.join(coco, "annotations", f"instances_{split}.json"),
            os.path.join(coco, split),
        ]
        for name, split in (("my_train", "train"), ("my_val", "val"))
    ]
    out = str(tmp_path / "own")
    proc = train_net(
        "--config", INSTANT, "SSDET.DATA.REGISTER", repr(register),
        "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)",
        "SSDET.DATA.LABELED_FRACTION", "0.5", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "final_metrics.json")))
    assert set(metrics["results"]) == {"my_val"}
    subset = json.load(open(os.path.join(out, "labeled_subset.json")))
    assert subset["datasets"]["my_train"]["num_images"] == 24
    assert len(subset["datasets"]["my_train"]["image_ids"]) == 12


def test_missing_config_file(tmp_path):
    proc = train_net("--config", str(tmp_path / "nope.yaml"))
    assert proc.returncode != 0 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_two_cpu_processes_train_on_gloo(tiny_world, tmp_path):
    # Detectron2 wraps the model in DistributedDataParallel with device_ids=[rank], which only
    # GPU modules accept; ssdet's CPU processes train under gloo with the batch split between them.
    out = str(tmp_path / "ddp")
    proc = train_net(
        "--config", INSTANT, "--num-gpus", "2", "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", out
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(os.path.join(out, "log.txt")).read()
    assert "World size: 2" in log
    metrics = json.load(open(os.path.join(out, "final_metrics.json")))
    assert metrics["results"]["mini_coco_val"]["bbox"].keys() >= {"AP"}


def test_bad_weights_with_two_processes_is_one_error_line(tiny_world, tmp_path):
    # Each launched worker refuses the file; the launching process reports it once, as its own.
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    proc = train_net(
        "--config", INSTANT, "--num-gpus", "2", "--eval-only",
        "MODEL.WEIGHTS", str(bad), "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count(f"error: Cannot read checkpoint '{bad}'") == 1
    assert "Traceback" not in proc.stderr
