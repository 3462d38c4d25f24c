"""Tests of the teacher's pseudo-labeling: exactness, resume, distribution, bad files, the CLI."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor, launch
from detectron2.modeling import build_model
from PIL import Image

from ssdet.config import add_ssdet_config
from ssdet.data.labeling import ImageListing, LabelingImages, ShapeBatcher
from ssdet.data.pseudo_labels import PseudoLabelShardWriter, PseudoLabelStore, read_metadata
from ssdet.engine.pseudo_labeling import (
    build_teacher,
    label_images,
    prepare_labeling,
)
from ssdet.utils.errors import InputError

from ..conftest import REPO, STORE_COLUMNS

CONFIG = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")
# Test sizes at which the tiny world's 48-px images (4 aspect ratios) pad to 3 different shapes,
# so that batches would mix padded shapes if the labeler did not group them.
SIZE_OPTS = ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(weights: str, output_dir: str, *opts) -> CfgNode:
    cfg = get_cfg()
    add_ssdet_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", output_dir]
        + SIZE_OPTS
        + list(opts)
    )
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def teacher(tiny_world, tmp_path_factory) -> str:
    """A tiny RetinaNet whose head is perturbed so that it scores some boxes above the floor.

    The box regressor stays near its init scale, so that its deltas are of a trained detector's
    size (larger random deltas magnify rounding differences beyond what a teacher shows).
    """
    directory = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = build_model(_cfg("", str(directory)))
    with torch.no_grad():
        model.head.cls_score.bias.fill_(-5.0)
        for name, p in model.head.named_parameters():
            p.add_((0.01 if name.startswith("bbox_pred") else 0.05) * torch.randn_like(p))
    DetectionCheckpointer(model, save_dir=str(directory)).save("teacher")
    return str(directory / "teacher.pth")


def _label(cfg: CfgNode, source: str, output: str, **kwargs) -> PseudoLabelStore:
    plan = prepare_labeling(cfg, source, output, config_path=CONFIG, **kwargs)
    return label_images(cfg, plan)


def _assert_same_stores(a: PseudoLabelStore, b: PseudoLabelStore) -> None:
    for name in STORE_COLUMNS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    assert a.metadata["failed_images"] == b.metadata["failed_images"]


def _assert_matches_predictor(store: PseudoLabelStore, i: int, expected, exact: bool) -> None:
    """Image i of the store holds DefaultPredictor's detections ``expected`` (Instances).

    Alone in its batch, an image gets DefaultPredictor's exact input, hence its exact output. In a
    batch, convolutions round differently (~1e-6 relative, then amplified by box regression to a
    few 1e-5 px here), and near-tied scores may swap places.
    """
    start, end = store.image_offsets[i : i + 2]
    boxes, scores = store.boxes[start:end], store.scores[start:end]
    classes = store.classes[start:end]
    assert (store.heights[i], store.widths[i]) == expected.image_size
    exp_boxes = expected.pred_boxes.tensor.numpy()
    exp_scores, exp_classes = expected.scores.numpy(), expected.pred_classes.numpy()
    assert len(boxes) == len(exp_boxes) > 0
    if exact:
        order = np.argsort(-exp_scores, kind="stable")  # the store's order
        assert boxes.tobytes() == exp_boxes[order].tobytes()
        assert scores.tobytes() == exp_scores[order].tobytes()
        assert classes.tolist() == exp_classes[order].tolist()
        return
    cost = np.abs(exp_boxes[:, None] - boxes[None]).max(-1) + np.abs(
        exp_scores[:, None] - scores[None]
    )
    cost[exp_classes[:, None] != classes[None]] = np.inf
    match = cost.argmin(1)
    assert len(set(match.tolist())) == len(match)
    np.testing.assert_allclose(boxes[match], exp_boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores[match], exp_scores, rtol=0, atol=1e-5)


def test_batched_labels_match_default_predictor(teacher, tmp_path):
    """Batches of 8 with 3 padded shapes give DefaultPredictor's detections on every image."""
    cfg = _cfg(teacher, str(tmp_path), "DATALOADER.NUM_WORKERS", 1)
    store = _label(cfg, "mini_imagenet_val", str(tmp_path / "out"), batch_size=8, chunk_size=16)
    listing = ImageListing.from_input("mini_imagenet_val")
    assert store.num_images == len(listing) and store.image_ids.tolist() == list(range(24))

    loaded = LabelingImages(listing, np.arange(len(listing)), "BGR", 64, 96)
    batcher = ShapeBatcher(8, 32)
    shapes = {batcher.padded_shape(*loaded[i]["image"].shape[-2:]) for i in range(len(listing))}
    assert len(shapes) == 3, "the test images must pad to several shapes"

    predictor = DefaultPredictor(cfg)
    for i in range(len(listing)):
        assert store.file_name(i) == listing.file_name(i)
        expected = predictor(read_image(listing.file_name(i), format="BGR"))["instances"]
        _assert_matches_predictor(store, i, expected, exact=False)
    assert os.path.isfile(tmp_path / "out" / "report.json")
    assert os.path.isfile(tmp_path / "out" / "report.png")


def test_resume_after_kill_equals_uninterrupted_run(teacher, tmp_path, monkeypatch):
    cfg = _cfg(teacher, str(tmp_path))
    settings = dict(batch_size=4, chunk_size=5)  # 24 images: 5 chunks
    whole = _label(cfg, "mini_imagenet_val", str(tmp_path / "whole"), **settings)

    killed = str(tmp_path / "killed")
    write = PseudoLabelShardWriter.write
    calls = []

    def dies_at_third_shard(self):
        calls.append(self.path)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return write(self)

    monkeypatch.setattr(PseudoLabelShardWriter, "write", dies_at_third_shard)
    with pytest.raises(KeyboardInterrupt):
        _label(cfg, "mini_imagenet_val", killed, **settings)
    monkeypatch.undo()
    shards = sorted(os.listdir(os.path.join(killed, "shards")))
    assert shards == ["chunk-000000.npz", "chunk-000001.npz"]

    with pytest.raises(InputError, match="--resume"):
        prepare_labeling(cfg, "mini_imagenet_val", killed, **settings)
    with pytest.raises(InputError, match="shards: --chunk-size 5 \\(now 6\\)"):
        prepare_labeling(cfg, "mini_imagenet_val", killed, resume=True, batch_size=4, chunk_size=6)

    plan = prepare_labeling(cfg, "mini_imagenet_val", killed, resume=True, **settings)
    assert plan.pending == (2, 3, 4)
    _assert_same_stores(label_images(cfg, plan), whole)
    # Resuming a finished run only merges again.
    again = _label(cfg, "mini_imagenet_val", killed, resume=True, **settings)
    _assert_same_stores(again, whole)


def test_a_damaged_shard_or_store_is_named_and_its_fix_works(teacher, tmp_path):
    """Issue 16, items 8 and 9: --resume names a damaged shard, and the fix, before labeling;
    deleting it relabels its chunk, and --resume merges a damaged store again."""
    cfg = _cfg(teacher, str(tmp_path))
    out, settings = str(tmp_path / "out"), dict(batch_size=4, chunk_size=8)  # 24 images: 3 chunks
    whole = _label(cfg, "mini_imagenet_val", out, **settings)
    shard = os.path.join(out, "shards", "chunk-000001.npz")
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[:-100])
    damaged = f"pseudo-label shard {re.escape(shard)} is damaged .*Delete it and run " + re.escape(
        "tools/pseudo_label.py --resume again"
    )
    with pytest.raises(InputError, match=damaged):
        prepare_labeling(cfg, "mini_imagenet_val", out, resume=True, **settings)
    os.remove(shard)
    plan = prepare_labeling(cfg, "mini_imagenet_val", out, resume=True, **settings)
    assert plan.pending == (1,)
    _assert_same_stores(label_images(cfg, plan), whole)

    heights = np.load(os.path.join(out, "store", "heights.npy"), mmap_mode="r+")
    heights[0] = -1
    heights.flush()
    del heights
    with pytest.raises(InputError, match=r"heights: 1 negative heights .*--resume"):
        PseudoLabelStore.open(os.path.join(out, "store"))
    _assert_same_stores(_label(cfg, "mini_imagenet_val", out, resume=True, **settings), whole)


def test_missing_or_partial_weights_are_refused(teacher, tmp_path):
    with pytest.raises(InputError, match="not found"):
        prepare_labeling(_cfg(str(tmp_path / "none.pth"), str(tmp_path)), "mini_imagenet_val", "o")
    backbone_only = {"model": {k: v for k, v in torch.load(teacher)["model"].items()
                               if k.startswith("backbone.")}}  # fmt: skip
    torch.save(backbone_only, tmp_path / "backbone.pth")
    with pytest.raises(InputError, match="do not fit the teacher config"):
        build_teacher(_cfg(str(tmp_path / "backbone.pth"), str(tmp_path)))


def test_odd_image_files_are_converted_or_skipped(teacher, tiny_world, tmp_path):
    source = ImageListing.from_input("mini_imagenet_train")
    folder = tmp_path / "images"
    folder.mkdir()
    good = [source.file_name(i) for i in (0, 7, 13)]
    for k, path in enumerate(good):
        shutil.copy(path, folder / f"good{k}.jpg")
    image = Image.open(good[1])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(folder / "exif_rotated.jpg", exif=exif)
    image.convert("CMYK").save(folder / "cmyk.jpg")
    image.save(folder / "png_named.jpg", format="PNG")
    image.convert("L").save(folder / "gray.jpg")
    data = open(good[0], "rb").read()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "zero_bytes.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    shutil.copy(good[2], folder / "missing.jpg")

    # A worker decodes: a bad file must come back as a failure record, not kill the worker.
    cfg = _cfg(teacher, str(tmp_path), "DATALOADER.NUM_WORKERS", 1)
    plan = prepare_labeling(cfg, str(folder), str(tmp_path / "out"), batch_size=1)
    os.remove(folder / "missing.jpg")  # vanishes between listing and labeling
    store = label_images(cfg, plan)

    failed = {f["file_name"]: f["reason"] for f in store.metadata["failed_images"]}
    assert sorted(failed) == ["missing.jpg", "text.jpg", "truncated.jpg", "zero_bytes.jpg"]
    assert failed["missing.jpg"].startswith("FileNotFoundError")
    assert "truncated" in failed["truncated.jpg"].lower()
    assert read_metadata(store.path)["counts"]["failed_images"] == 4
    names = [store.stored_file_name(i) for i in range(store.num_images)]
    assert names == ["cmyk.jpg", "exif_rotated.jpg", "good0.jpg", "good1.jpg", "good2.jpg",
                     "gray.jpg", "png_named.jpg"]  # fmt: skip
    rotated = names.index("exif_rotated.jpg")
    assert (store.heights[rotated], store.widths[rotated]) == image.size  # (w, h) swapped

    predictor = DefaultPredictor(cfg)
    for i, name in enumerate(names):
        expected = predictor(read_image(str(folder / name), format="BGR"))["instances"]
        _assert_matches_predictor(store, i, expected, exact=True)


def test_two_processes_with_gloo_equal_one(teacher, tmp_path, monkeypatch):
    """Detectron2's launch with 2 processes on the CPU (gloo): two ranks, one merge, same store.

    Each rank gets 1 thread (2 cores // 2 ranks), as this process has: thread counts change how
    convolutions round, so only runs with equal threads per rank are byte-identical.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the spawned ranks' thread count before the split
    cfg = _cfg(teacher, str(tmp_path))
    plan = prepare_labeling(
        cfg, "mini_imagenet_val", str(tmp_path / "two"), batch_size=4, chunk_size=5
    )
    launch(label_images, 2, dist_url="auto", args=(cfg, plan))
    one = _label(cfg, "mini_imagenet_val", str(tmp_path / "one"), batch_size=4, chunk_size=5)
    _assert_same_stores(one, PseudoLabelStore.open(tmp_path / "two" / "store"))


def test_cli_bad_input_is_one_error_line(teacher, tmp_path):
    """A missing folder takes the unknown dataset's path (see the listing test)."""
    runs = {
        "no weights": (["--input", "mini_imagenet_val"], "MODEL.WEIGHTS is empty"),
        "unknown dataset": (
            ["--input", "no_such_dataset", "MODEL.WEIGHTS", teacher],
            "neither a folder nor a registered dataset",
        ),
        # Detectron2's common flag, which labeling would otherwise ignore.
        "eval only": (
            ["--input", "mini_imagenet_val", "--eval-only", "MODEL.WEIGHTS", teacher],
            "--eval-only does not apply to pseudo-labeling",
        ),
    }
    # In parallel: each run spends its few seconds importing torch and Detectron2.
    processes = {
        name: subprocess.Popen(
            [
                sys.executable,
                os.path.join(REPO, "tools", "pseudo_label.py"),
                "--config",
                CONFIG,
                "--output",
                str(tmp_path / name.replace(" ", "_")),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name, (args, _) in runs.items()
    }
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        errors = [line for line in (stdout + stderr).splitlines() if line.startswith("error:")]
        assert process.returncode == 1, (name, stderr[-2000:])
        assert len(errors) == 1 and runs[name][1] in errors[0], (name, errors, stderr[-2000:])
        assert "Traceback" not in stdout + stderr, name
