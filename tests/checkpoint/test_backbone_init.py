"""SSDET.INIT: a backbone checkpoint becomes the detector's bottom-up ResNet when training starts
fresh, inconsistent configs and misfit checkpoints are refused, and the init is recorded."""

import json
import os
import time

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from ssdet.checkpoint import file_sha256, save_backbone_checkpoint
from ssdet.checkpoint.backbone_init import (
    INIT_RECORD_FILE,
    apply_backbone_init,
    check_init_config,
    init_backbone,
    load_resnet_state_dict,
)
from ssdet.config import add_ssdet_config
from ssdet.engine import Trainer, write_final_metrics
from ssdet.modeling.backbone import build_ssdet_resnet_backbone
from ssdet.utils.errors import InputError

from ..conftest import REPO

INSTANT = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")


def instant_cfg(tmp_path, **init):
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(INSTANT)
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    cfg.DATASETS.TEST = ()
    for key, value in init.items():
        setattr(cfg.SSDET, key, value)
    return cfg


def backbone_tensors(model) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in model.backbone.bottom_up.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def pretrained_backbone(cfg, path, method="supervised", seed=123, width=None, **extra) -> dict:
    """A randomly initialized ResNet of the detector's architecture (or ``width``) saved as a
    backbone checkpoint, with random BN statistics; returns its tensors."""
    torch.manual_seed(seed)
    resnet_cfg = cfg.clone()
    if width is not None:
        resnet_cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = width
        resnet_cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = width
    net = build_ssdet_resnet_backbone(resnet_cfg, ShapeSpec(channels=3))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    resnets = resnet_cfg.MODEL.RESNETS
    arch = {
        "depth": resnets.DEPTH,
        "stem_out_channels": resnets.STEM_OUT_CHANNELS,
        "res2_out_channels": resnets.RES2_OUT_CHANNELS,
    }
    save_backbone_checkpoint(path, net.state_dict(), arch, method, extra or None)
    return {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(
    "init,weights,model_weights,message",
    [
        ("IMAGE_NET", "", "", "Unknown SSDET.INIT 'IMAGE_NET'"),
        ("RAND", "w.pth", "", "SSDET.INIT is RAND"),
        ("SIMCLR", "", "", "SSDET.INIT SIMCLR needs SSDET.INIT_WEIGHTS"),
        ("IMAGENET", "w.pth", "model_final.pth", "both initialize the model"),
    ],
)
def test_inconsistent_init_config_is_refused(tmp_path, init, weights, model_weights, message):
    cfg = instant_cfg(tmp_path, INIT=init, INIT_WEIGHTS=weights)
    cfg.MODEL.WEIGHTS = model_weights
    with pytest.raises(InputError, match=message):
        check_init_config(cfg)


def test_rand_with_detector_weights_is_allowed(tmp_path):
    cfg = instant_cfg(tmp_path)
    cfg.MODEL.WEIGHTS = "model_final.pth"
    check_init_config(cfg)


def test_imagenet_init_loads_backbone_and_records_it(tmp_path):
    weights = str(tmp_path / "imagenet.pth")
    cfg = instant_cfg(tmp_path, INIT="IMAGENET", INIT_WEIGHTS=weights)
    expected = pretrained_backbone(cfg, weights)
    model = build_model(cfg)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    record = apply_backbone_init(model, cfg)

    got = backbone_tensors(model)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    for key, value in model.head.state_dict().items():
        assert torch.equal(value, head_before[key]), "the init changed more than the backbone"

    saved = json.load(open(os.path.join(cfg.OUTPUT_DIR, INIT_RECORD_FILE)))
    assert saved == json.loads(json.dumps(record))
    assert saved["init"] == "IMAGENET" and saved["method"] == "supervised"
    assert saved["weights"] == os.path.abspath(weights)
    assert saved["weights_sha256"] == file_sha256(weights)
    assert saved["matched_keys"] == len(expected)
    assert saved["missing_keys"] == [] and saved["unused_keys"] == []


def test_rand_init_keeps_random_weights(tmp_path):
    cfg = instant_cfg(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in backbone_tensors(model).items()}
    record = init_backbone(model, cfg)
    assert record["init"] == "RAND" and record["weights"] == "" and record["matched_keys"] == 0
    assert all(torch.equal(v, before[k]) for k, v in backbone_tensors(model).items())


def test_checkpoint_without_norm_statistics_loads_and_reports_them(tmp_path):
    weights = str(tmp_path / "gn_like.pth")
    cfg = instant_cfg(tmp_path, INIT="SIMCLR", INIT_WEIGHTS=weights)
    expected = pretrained_backbone(cfg, weights, method="simclr")
    stats = [k for k in expected if k.endswith(("running_mean", "running_var"))]
    arch = torch.load(weights, weights_only=True)["arch"]
    params = {k: v for k, v in expected.items() if k not in stats}
    save_backbone_checkpoint(weights, params, arch, "simclr")
    record = init_backbone(build_model(cfg), cfg)
    assert sorted(record["missing_keys"]) == sorted(stats)
    assert record["matched_keys"] == len(params)


def test_misfit_checkpoints_are_refused(tmp_path):
    weights = str(tmp_path / "w.pth")
    cfg = instant_cfg(tmp_path, INIT="IMAGENET", INIT_WEIGHTS=weights)
    model = build_model(cfg)

    pretrained_backbone(cfg, weights, width=32)
    with pytest.raises(InputError, match="MODEL.RESNETS.DEPTH 18, STEM_OUT_CHANNELS 16"):
        init_backbone(model, cfg)

    pretrained_backbone(cfg, weights, method="simclr")
    with pytest.raises(InputError, match="method 'simclr'.*set SSDET.INIT SIMCLR"):
        init_backbone(model, cfg)

    pretrained_backbone(cfg, weights, input_format="RGB")
    with pytest.raises(InputError, match="expects RGB images but INPUT.FORMAT is BGR"):
        init_backbone(model, cfg)

    os.remove(weights)
    with pytest.raises(InputError, match="not found"):
        init_backbone(model, cfg)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    cfg = instant_cfg(tmp_path)
    resnet = build_model(cfg).backbone.bottom_up
    state = dict(resnet.state_dict())
    state["res3.0.conv1.weight"] = torch.zeros(32, 16, 1, 1)
    with pytest.raises(
        InputError, match=r"res3\.0\.conv1\.weight has shape \(32, 16, 1, 1\).*\(32, 16, 3, 3\)"
    ):
        load_resnet_state_dict(resnet, state, "ckpt")
    del state["res3.0.conv1.weight"]
    with pytest.raises(InputError, match=r"res3\.0\.conv1\.weight .*not in the checkpoint"):
        load_resnet_state_dict(resnet, state, "ckpt")


def test_trainer_applies_init_on_fresh_start_only_and_records_it(tiny_world, tmp_path):
    weights = str(tmp_path / "imagenet.pth")
    cfg = instant_cfg(tmp_path, INIT="IMAGENET", INIT_WEIGHTS=weights)
    cfg.SOLVER.MAX_ITER = 1
    expected = pretrained_backbone(cfg, weights)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    got = backbone_tensors(trainer.model)
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    record = json.load(open(os.path.join(cfg.OUTPUT_DIR, INIT_RECORD_FILE)))
    assert record["init"] == "IMAGENET" and record["weights_sha256"] == file_sha256(weights)

    # A run resumed from its checkpoint keeps the checkpoint: the init is not applied again
    # (here it could not be: its file is gone).
    with torch.no_grad():
        trainer.model.backbone.bottom_up.stem.conv1.weight.add_(1.0)
    trainer.checkpointer.save("model_0000000")
    trained = backbone_tensors(trainer.model)
    os.remove(weights)
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert all(torch.equal(v, trained[k]) for k, v in backbone_tensors(resumed.model).items())

    rand_cfg = instant_cfg(tmp_path / "rand")
    rand = Trainer(rand_cfg)
    rand.resume_or_load(resume=False)
    got = backbone_tensors(rand.model)
    assert not torch.equal(got["stem.conv1.weight"], expected["stem.conv1.weight"])
    rand_record = json.load(open(os.path.join(rand_cfg.OUTPUT_DIR, INIT_RECORD_FILE)))
    assert rand_record["init"] == "RAND"


def test_final_metrics_record_the_init(tmp_path):
    cfg = instant_cfg(tmp_path, INIT="SIMCLR", INIT_WEIGHTS="pretrained/simclr.pth")
    os.makedirs(cfg.OUTPUT_DIR)
    write_final_metrics(cfg, {"mini_coco_val": {"bbox": {"AP": 1.0}}}, time.time(), INSTANT)
    metrics = json.load(open(os.path.join(cfg.OUTPUT_DIR, "final_metrics.json")))
    assert metrics["init"] == "SIMCLR"
    assert metrics["init_weights"] == "pretrained/simclr.pth"
