"""Every config file in configs/ loads, and builds its model."""

import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ssdet.checkpoint.backbone_init import check_init_config
from ssdet.config import add_ssdet_config

from .conftest import REPO

CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
    # configs/ablations/ holds grid files of tools/ablate.py, not Detectron2 configs.
    and os.path.relpath(p, os.path.join(REPO, "configs")).split(os.sep)[0] != "ablations"
)


def load(path: str):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_found():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_loads_and_builds(path):
    cfg = load(path)
    assert cfg.OUTPUT_DIR.startswith("output/"), "each leaf config names its own output folder"
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_init_is_consistent(path):
    """The backbone init and MODEL.WEIGHTS of every config pass the init checks, so a run records
    the init that really starts its backbone (ImageNet weights come through SSDET.INIT, never a
    whole-detector MODEL.WEIGHTS that would record RAND)."""
    cfg = load(path)
    check_init_config(cfg)
    assert cfg.MODEL.WEIGHTS == "", path
