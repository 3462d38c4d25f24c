"""Converters into ssdet's backbone format: torchvision and SimCLR-style ResNets give the same
features in Detectron2's ResNet; bad checkpoints are refused with a message."""

import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from ssdet.checkpoint import (
    FORMAT_NAME,
    convert_checkpoint,
    load_backbone_checkpoint,
    save_backbone_checkpoint,
    torchvision_to_detectron2_key,
)
from ssdet.checkpoint.backbone_init import load_resnet_state_dict
from ssdet.engine.defaults import load_cfg
from ssdet.modeling.backbone import build_ssdet_resnet_backbone
from ssdet.utils.errors import InputError

from ..conftest import REPO, RunsCommand


def randomized_torchvision_resnet(name: str, seed: int = 0) -> torch.nn.Module:
    """A torchvision ResNet with random weights AND random BN statistics and affine terms, so that
    a BN mapped to the wrong layer or field changes the features."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)()
    randomize_batch_norms(net)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.num_batches_tracked.fill_(7)
    return net.eval()


def randomize_batch_norms(net: torch.nn.Module) -> None:
    """Random BN statistics and affine terms (the RNG's next draws), in place."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)


def detectron2_resnet(depth: int, norm: str, width: int = 64, out: str = "res5"):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = width
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = width * 4 if depth >= 50 else width
    cfg.MODEL.RESNETS.OUT_FEATURES = [out]
    # torchvision (ResNet v1.5) strides in the bottleneck's 3x3 conv.
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_ssdet_resnet_backbone(cfg, ShapeSpec(channels=3))


def torchvision_res5(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def save_state(tmp_path, name: str, obj) -> str:
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def test_torchvision_key_table():
    table = {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.conv3.weight": "res2.0.conv3.weight",
        "layer3.5.bn2.bias": "res4.5.conv2.norm.bias",
        "layer2.0.downsample.0.weight": "res3.0.shortcut.weight",
        "layer4.0.downsample.1.running_mean": "res5.0.shortcut.norm.running_mean",
        "fc.weight": None,
        "layer1.0.bn1.num_batches_tracked": None,
        "layer5.0.conv1.weight": None,
        "layer1.0.conv4.weight": None,
    }
    assert {k: torchvision_to_detectron2_key(k) for k in table} == table


@pytest.mark.parametrize(
    "name,depth,norm,input_format",
    [
        ("resnet50", 50, "FrozenBN", "BGR"),
        ("resnet50", 50, "BN", "RGB"),
        ("resnet18", 18, "BN", "BGR"),
    ],
)
def test_converted_torchvision_resnet_gives_same_features(
    tmp_path, name, depth, norm, input_format
):
    net = randomized_torchvision_resnet(name)
    source = save_state(tmp_path, f"{name}.pth", net.state_dict())
    conversion = convert_checkpoint(source, input_format=input_format)
    assert conversion.source_format == "torchvision"
    assert conversion.arch == {
        "depth": depth,
        "stem_out_channels": 64,
        "res2_out_channels": 256 if depth == 50 else 64,
    }
    assert set(conversion.dropped) >= {"fc.weight", "fc.bias", "bn1.num_batches_tracked"}
    assert not conversion.unmatched and not conversion.missing
    output = str(tmp_path / "converted.pth")
    save_backbone_checkpoint(
        output, conversion.model, conversion.arch, conversion.method, conversion.extra
    )
    checkpoint = load_backbone_checkpoint(output)

    d2 = detectron2_resnet(depth, norm).eval()
    keys = load_resnet_state_dict(d2, checkpoint["model"], output)
    assert not keys["missing"] and not keys["unused"]
    # Float64, so that the comparison tests the mapping, not float32 rounding of deep features.
    net, d2 = net.double(), d2.double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = torchvision_res5(net, x)
        # A BGR checkpoint takes the same image with its channels reversed.
        got = d2(x.flip(1) if input_format == "BGR" else x)["res5"]
    assert got.shape == expected.shape
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def simclr_checkpoint(resnet: torch.nn.Module, prefix: str, sequential: bool = False) -> dict:
    """A SimCLR-style training checkpoint: the ResNet under ``prefix`` with its fc head inside
    the encoder, a projection head beside it, training metadata around the state dict."""
    if sequential:
        encoder = torch.nn.Sequential(*list(resnet.children())[:-1])
    else:
        encoder = resnet
    state = {prefix + k: v for k, v in encoder.state_dict().items()}
    torch.manual_seed(1)
    state["module.projector.0.weight" if prefix.startswith("module.") else "projector.0.weight"] = (
        torch.randn(128, 512)
    )
    state["g.2.weight"] = torch.randn(64, 128)
    return {"epoch": 100, "state_dict": state, "optimizer": {"lr": 0.3}}


@pytest.mark.parametrize(
    "prefix,sequential",
    [
        ("encoder.", False),
        ("module.encoder.", False),
        ("backbone.", False),
        ("convnet.", False),
        ("backbone.", True),
    ],
)
def test_simclr_checkpoint_converts_and_reports_dropped_heads(tmp_path, prefix, sequential):
    resnet = randomized_torchvision_resnet("resnet18", seed=3)
    path = save_state(tmp_path, "simclr.ckpt", simclr_checkpoint(resnet, prefix, sequential))
    conversion = convert_checkpoint(path, "simclr", input_format="RGB", method="simclr")
    assert conversion.source_format == "simclr" and conversion.prefix == prefix
    assert conversion.method == "simclr"
    heads = {k for k, reason in conversion.dropped.items() if "head" in reason}
    expected_heads = {"g.2.weight", next(k for k in heads if k.endswith("projector.0.weight"))}
    if not sequential:
        expected_heads |= {prefix + "fc.weight", prefix + "fc.bias"}
    assert heads == expected_heads
    assert "projection head" in conversion.summary()
    reference = {
        torchvision_to_detectron2_key(k): v
        for k, v in resnet.state_dict().items()
        if torchvision_to_detectron2_key(k)
    }
    assert set(conversion.model) == set(reference)
    for key, value in reference.items():
        assert torch.equal(conversion.model[key], value), key


def test_auto_format_finds_simclr_prefix_and_flips_to_bgr(tmp_path):
    resnet = randomized_torchvision_resnet("resnet18", seed=4)
    path = save_state(tmp_path, "simclr.ckpt", simclr_checkpoint(resnet, "module.encoder."))
    conversion = convert_checkpoint(path)
    assert conversion.source_format == "simclr"
    assert conversion.extra["input_format"] == "BGR"
    assert torch.equal(conversion.model["stem.conv1.weight"], resnet.conv1.weight.flip(1))


def test_ssdet_checkpoint_is_validated_and_kept(tmp_path):
    torch.manual_seed(0)
    net = detectron2_resnet(18, "BN", width=16, out="res5")
    path = str(tmp_path / "pretrained.pth")
    arch = {"depth": 18, "stem_out_channels": 16, "res2_out_channels": 16}
    save_backbone_checkpoint(path, net.state_dict(), arch, "supervised", {"input_format": "BGR"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT_NAME and raw["version"] == 1
    assert not any(k.endswith("num_batches_tracked") for k in raw["model"])

    conversion = convert_checkpoint(path)
    assert conversion.source_format == "ssdet" and conversion.method == "supervised"
    assert conversion.arch == arch
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(conversion.model[key], value)
    rgb = convert_checkpoint(path, input_format="RGB")
    assert torch.equal(rgb.model["stem.conv1.weight"], net.stem.conv1.weight.flip(1))
    with pytest.raises(InputError, match="not the requested ResNet-34"):
        convert_checkpoint(path, depth=34)

    # A file written without save_backbone_checkpoint may keep BN step counters: still read.
    raw["model"] = dict(net.state_dict())
    torch.save(raw, path)
    assert set(load_backbone_checkpoint(path)["model"]) == set(conversion.model)


def test_unmatched_keys_are_refused_or_listed(tmp_path):
    state = randomized_torchvision_resnet("resnet18").state_dict()
    state["layer1.0.se.fc1.weight"] = torch.zeros(4, 64)
    path = save_state(tmp_path, "se.pth", state)
    with pytest.raises(InputError, match=r"layer1\.0\.se\.fc1\.weight.*--allow-unmatched"):
        convert_checkpoint(path)
    conversion = convert_checkpoint(path, allow_unmatched=True)
    assert conversion.unmatched == ["layer1.0.se.fc1.weight"]
    assert "unmatched source keys" in conversion.summary()


def test_wrong_shapes_are_refused(tmp_path):
    path = save_state(tmp_path, "r18.pth", randomized_torchvision_resnet("resnet18").state_dict())
    # ResNet-18 weights into a ResNet-50 target: the message names a key and both shapes.
    with pytest.raises(
        InputError,
        match=r"a ResNet-18 .*res2\.0\.conv1\.weight has shape \(64, 64, 3, 3\) in the "
        r"checkpoint but \(64, 64, 1, 1\) in a ResNet-50",
    ):
        convert_checkpoint(path, depth=50, res2_out_channels=256)
    with pytest.raises(InputError, match=r"stem\.conv1\.weight has shape \(64, 3, 7, 7\)"):
        convert_checkpoint(path, stem_out_channels=32)
    state = randomized_torchvision_resnet("resnet18").state_dict()
    del state["layer2.1.conv2.weight"]
    with pytest.raises(InputError, match=r"missing.*res3\.1\.conv2\.weight"):
        convert_checkpoint(save_state(tmp_path, "holey.pth", state))


@pytest.mark.parametrize(
    "content,message",
    [
        ({"linear.weight": torch.zeros(3, 3), "linear.bias": torch.zeros(3)}, "no ResNet"),
        ({"epoch": 3, "lr": 0.1}, "holds no state dict"),
        (b"\x00not a checkpoint at all", "Cannot read checkpoint"),
    ],
)
def test_non_resnet_and_corrupt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(InputError, match=message):
        convert_checkpoint(str(path))


def test_missing_file_and_non_ssdet_file_are_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        convert_checkpoint(str(tmp_path / "absent.pth"))
    path = save_state(tmp_path, "tv.pth", randomized_torchvision_resnet("resnet18").state_dict())
    with pytest.raises(InputError, match="not an ssdet backbone checkpoint.*convert_pretrained"):
        load_backbone_checkpoint(path)


def test_save_refuses_state_dict_that_does_not_fit_arch(tmp_path):
    net = detectron2_resnet(18, "BN", width=16)
    with pytest.raises(InputError, match=r"stem\.conv1\.weight has shape \(16, 3, 7, 7\)"):
        save_backbone_checkpoint(
            tmp_path / "x.pth",
            net.state_dict(),
            {"depth": 18, "stem_out_channels": 32, "res2_out_channels": 16},
            "supervised",
        )
    state = dict(net.state_dict(), **{"linear.weight": torch.zeros(10, 128)})
    with pytest.raises(InputError, match="not part of a ResNet-18.*linear.weight"):
        save_backbone_checkpoint(
            tmp_path / "x.pth",
            state,
            {"depth": 18, "stem_out_channels": 16, "res2_out_channels": 16},
            "supervised",
        )
    assert not (tmp_path / "x.pth").exists()


def randomized_detectron2_resnet(depth: int, width: int, seed: int = 0) -> torch.nn.Module:
    """A Detectron2 ResNet with random weights and random BN statistics and affine terms."""
    torch.manual_seed(seed)
    net = detectron2_resnet(depth, "BN", width=width)
    randomize_batch_norms(net)
    return net.eval()


def write_pickle(path, obj) -> str:
    # Protocol 2, as Detectron2's tools/convert-torchvision-to-d2.py writes its .pkl files.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return str(path)


@pytest.mark.parametrize(
    "author,width,source_format,flipped",
    [
        # convert-torchvision-to-d2.py's output: RGB weights, flipped for the BGR target.
        ("torchvision", 64, "detectron2", True),
        # A bare dict of arrays at the mini world's half width: Detectron2's BGR, kept.
        (None, 32, "auto", False),
    ],
)
def test_detectron2_pkl_converts_and_gives_same_features(
    tmp_path, capsys, author, width, source_format, flipped
):
    net = randomized_detectron2_resnet(18, width)
    arrays = {k: v.numpy() for k, v in net.state_dict().items()}
    assert any(k.endswith("num_batches_tracked") for k in arrays)
    if author is None:
        content = arrays
    else:
        content = {"model": arrays, "__author__": author, "matching_heuristics": True}
    source = write_pickle(tmp_path / "R-18.pkl", content)
    output = str(tmp_path / "converted.pth")
    tool = load_tool()
    tool.main(tool.parse_args(["--input", source, "--output", output, "--format", source_format]))
    stdout = capsys.readouterr().out
    assert "source format: detectron2" in stdout
    assert ("(the source's RGB, stem flipped)" in stdout) == flipped

    checkpoint = load_backbone_checkpoint(output)
    assert checkpoint["arch"] == {
        "depth": 18,
        "stem_out_channels": width,
        "res2_out_channels": width,
    }
    assert checkpoint["extra"]["source_format"] == "detectron2"
    assert checkpoint["extra"]["source_input_format"] == ("RGB" if flipped else "BGR")
    fresh = detectron2_resnet(18, "BN", width=width).eval()
    keys = load_resnet_state_dict(fresh, checkpoint["model"], output)
    assert not keys["missing"] and not keys["unused"]
    net, fresh = net.double(), fresh.double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = net(x)["res5"]
        got = fresh(x.flip(1) if flipped else x)["res5"]
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_detectors_bottom_up_resnet_is_converted(tmp_path):
    # A Detectron2 training checkpoint of an ssdet detector (the instant test's narrow R18 FPN):
    # the ResNet under backbone.bottom_up., the FPN and the heads dropped.
    cfg = load_cfg(os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml"))
    torch.manual_seed(0)
    detector = build_model(cfg)
    path = save_state(
        tmp_path, "model_final.pth", {"model": detector.state_dict(), "iteration": 39}
    )
    conversion = convert_checkpoint(path)
    assert conversion.source_format == "detectron2"
    assert conversion.prefix == "backbone.bottom_up."
    assert conversion.arch == {"depth": 18, "stem_out_channels": 16, "res2_out_channels": 16}
    assert not conversion.unmatched and not conversion.missing
    reasons = set(conversion.dropped.values())
    assert "not the bottom-up ResNet (a detector's FPN and heads)" in reasons
    assert "backbone.fpn_lateral3.weight" in conversion.dropped
    bottom_up = detector.backbone.bottom_up.state_dict()
    assert set(conversion.model) == {k for k in bottom_up if not k.endswith("num_batches_tracked")}
    for key, value in conversion.model.items():
        assert torch.equal(value, bottom_up[key]), key


def test_caffe2_names_and_pickles_that_run_code_are_refused(tmp_path):
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res2_0_branch2a_w": np.zeros(1)}
    caffe2 = write_pickle(tmp_path / "R-50.pkl", {"blobs": blobs})
    for source_format in ("detectron2", "auto"):
        with pytest.raises(InputError, match=r"Caffe2 / Detectron1 names \(conv1_w"):
            convert_checkpoint(caffe2, source_format)

    # .pkl files are read by the restricted unpickler, never pickle.load (the tool prints the
    # InputError as one error: line, see test_tool_reports_corrupt_file_as_one_error_line).
    marker = tmp_path / "ran"
    evil = {"model": {"stem.conv1.weight": RunsCommand(str(marker))}, "__author__": "someone"}
    evil_pkl = write_pickle(tmp_path / "evil.pkl", evil)
    for source_format in ("detectron2", "auto"):
        with pytest.raises(InputError, match=r"Refused to load .*evil\.pkl.*calls posix\.system"):
            convert_checkpoint(evil_pkl, source_format, trust_pickle=True)
    assert not marker.exists()


def load_tool():
    """tools/convert_pretrained.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "convert_pretrained", os.path.join(REPO, "tools", "convert_pretrained.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_converts_and_reports(tmp_path, capsys):
    tool = load_tool()
    source = save_state(tmp_path, "r18.pth", randomized_torchvision_resnet("resnet18").state_dict())
    output = str(tmp_path / "out" / "r18_bgr.pth")
    tool.main(tool.parse_args(["--input", source, "--output", output]))
    stdout = capsys.readouterr().out
    assert "dropped (classifier or projection head (fc)): fc.weight, fc.bias" in stdout
    checkpoint = load_backbone_checkpoint(output)
    assert checkpoint["arch"]["depth"] == 18 and checkpoint["method"] == "converted"


def test_tool_reports_corrupt_file_as_one_error_line(tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save(randomized_torchvision_resnet("resnet18").state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "convert_pretrained.py"),
            "--input",
            str(path),
            "--output",
            str(tmp_path / "out.pth"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("error: Cannot read checkpoint"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.pth").exists()
