"""config_detectron2.yaml: the model of a run's weights in stock Detectron2's keys and builders;
a process that never imports ssdet builds it and predicts what ssdet predicts."""

import os
import subprocess
import sys

import cv2
import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from ssdet.checkpoint import STOCK_CONFIG, stock_config, write_stock_config
from ssdet.engine.defaults import load_cfg
from ssdet.engine.joint import detector_config

from ..conftest import REPO
from ..test_configs import CONFIGS

STOCK_PREDICT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stock_predict.py")
INSTANT = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")


def val_image() -> str:
    """A tiny-world image (needs the ``tiny_world`` fixture)."""
    return DatasetCatalog.get("mini_coco_val")[0]["file_name"]


def stock_predictions(config: str, image: str, tmp_path) -> dict[str, torch.Tensor]:
    """What stock Detectron2 predicts for ``image`` from ``config``, in a process without ssdet."""
    out = str(tmp_path / "stock_predictions.pt")
    proc = subprocess.run(
        [sys.executable, STOCK_PREDICT, config, image, out],
        capture_output=True,
        text=True,
        timeout=300,
        # Not the repository: nothing there is importable by accident.
        cwd=str(tmp_path),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def ssdet_predictions(cfg, weights: str, image: str) -> dict[str, torch.Tensor]:
    """What ssdet's model of ``cfg`` with ``weights`` predicts for ``image`` (one thread, as the
    stock process)."""
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        instances = DefaultPredictor(cfg)(cv2.imread(image))["instances"]
    finally:
        torch.set_num_threads(threads)
    return {
        "boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "classes": instances.pred_classes,
    }


def check_same_predictions(stock: dict, ours: dict) -> None:
    assert len(ours["scores"]) > 0
    torch.testing.assert_close(stock, ours)


def test_stock_width_r18_gets_detectron2_builder(tiny_world, tmp_path):
    # An R18 at Detectron2's width: Detectron2's own builder, no module beside the config.
    cfg = load_cfg(
        INSTANT, ["MODEL.RESNETS.STEM_OUT_CHANNELS", 64, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    )
    torch.manual_seed(0)
    weights = str(tmp_path / "run" / "model_final.pth")
    os.makedirs(os.path.dirname(weights))
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    path = write_stock_config(cfg, weights)
    assert path == os.path.join(os.path.dirname(weights), STOCK_CONFIG)
    assert set(os.listdir(os.path.dirname(weights))) == {STOCK_CONFIG, "model_final.pth"}
    written = yaml.safe_load(open(path))
    assert "SSDET" not in written
    assert written["MODEL"]["BACKBONE"]["NAME"] == "build_retinanet_resnet_fpn_backbone"
    assert written["MODEL"]["WEIGHTS"] == weights
    image = val_image()
    check_same_predictions(
        stock_predictions(path, image, tmp_path), ssdet_predictions(cfg, weights, image)
    )


@pytest.mark.parametrize(
    "config,opts,backbone,notes",
    [
        ("coco/retinanet_R50_FPN_S1_supervised.yaml", [], "build_retinanet_resnet_fpn_backbone", 0),
        (
            "mini/retinanet_instant_test.yaml",
            ["MODEL.BACKBONE.NAME", "build_ssdet_resnet_backbone"],
            "build_resnet_any_width_backbone",
            4,
        ),
        ("mini/Base-RetinaNet-mini.yaml", [], "build_retinanet_resnet_any_width_fpn_backbone", 4),
    ],
)
def test_builder_names_and_header_notes(config, opts, backbone, notes):
    cfg = load_cfg(os.path.join(REPO, "configs", config), opts)
    stock, lines = stock_config(cfg, "model_final.pth")
    assert stock.MODEL.BACKBONE.NAME == backbone
    assert len(lines) == notes
    assert "SSDET" not in stock and stock.MODEL.WEIGHTS == os.path.abspath("model_final.pth")
    # Every other value is the run's.
    assert stock.MODEL.RESNETS == cfg.MODEL.RESNETS and stock.INPUT == cfg.INPUT
    fresh = get_cfg()
    fresh.merge_from_other_cfg(stock)


def shapes(cfg) -> dict[str, torch.Size]:
    """The state dict shapes of the model ``cfg`` names, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_has_a_stock_config_of_the_same_model(path):
    # The model of the weights a run exports: a joint run's detector without its head.
    cfg = detector_config(load_cfg(path))
    stock, _ = stock_config(cfg, "model_final.pth")
    fresh = get_cfg()
    fresh.merge_from_other_cfg(stock)
    assert shapes(fresh) == shapes(cfg)


def test_keys_and_names_that_are_not_detectron2s_are_noted():
    cfg = load_cfg(INSTANT)
    cfg.MODEL.EXTRA_HEAD = 3
    cfg.MODEL.META_ARCHITECTURE = "JointRetinaNet"
    stock, lines = stock_config(cfg, "w.pth")
    assert "EXTRA_HEAD" not in stock.MODEL
    text = "\n".join(lines)
    assert "Left out, not Detectron2 keys: MODEL.EXTRA_HEAD." in text
    assert "MODEL.META_ARCHITECTURE JointRetinaNet is not Detectron2's" in text


def test_fcos_values_left_out_with_ssdet_are_noted():
    fcos = os.path.join(REPO, "configs", "mini", "fcos_instant_test.yaml")
    _, lines = stock_config(load_cfg(fcos), "w.pth")
    text = "\n".join(lines)
    assert "MODEL.META_ARCHITECTURE SsdetFCOS is not Detectron2's" in text
    assert "SSDET.FCOS" not in text  # at the defaults, the stock config builds the same model
    _, lines = stock_config(load_cfg(fcos, ["SSDET.FCOS.CENTER_SAMPLING_RADIUS", "2.0"]), "w.pth")
    assert "SSDET.FCOS {'CENTER_SAMPLING_RADIUS': 2.0}" in "\n".join(lines)
