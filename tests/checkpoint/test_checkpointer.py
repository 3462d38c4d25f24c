"""SsdetCheckpointer: no code runs from a checkpoint file, bad files are InputErrors, writes are
atomic, and a broken ``last_checkpoint`` falls back to the newest checkpoint that loads."""

import collections
import logging
import os
import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

from ssdet.checkpoint import (
    SsdetCheckpointer,
    is_loadable_checkpoint,
    load_checkpoint_file,
    load_weights_pickle,
)
from ssdet.utils.errors import InputError

from ..conftest import RunsCommand


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return Tiny().state_dict()


def _write_pickle(path, obj, protocol: int) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


@pytest.fixture
def warnings_of_checkpointer():
    """The checkpointer's log records (a handler of its own: ssdet's logger may not propagate)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log = logging.getLogger("ssdet.checkpoint.checkpointer")
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "ran"
    evil = {"model": {"conv.weight": RunsCommand(str(marker))}, "__author__": "someone"}
    path = _write_pickle(tmp_path / "evil.pkl", evil, protocol)
    with pytest.raises(InputError, match=r"evil\.pkl.*calls posix\.system"):
        SsdetCheckpointer(Tiny()).load(path)
    with pytest.raises(InputError, match="posix.system"):
        load_weights_pickle(path)
    assert not marker.exists()


def test_torch_file_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {"conv.weight": RunsCommand(str(marker))}}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match="weights_only"):
        SsdetCheckpointer(Tiny()).load(str(tmp_path / "evil.pth"))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_model_zoo_pickle_of_numpy_arrays_loads(tmp_path, protocol):
    weights = _weights(1)
    zoo = {
        "model": collections.OrderedDict((k, v.numpy()) for k, v in weights.items()),
        "__author__": "Detectron2 Model Zoo",
        "extra": {"step": np.int64(7), "lr": np.float32(0.1), "name": b"R-50", "shape": (1, 2)},
    }
    path = _write_pickle(tmp_path / "zoo.pkl", zoo, protocol)
    model = Tiny()
    SsdetCheckpointer(model).load(path)
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_detectron1_blobs_pickle_keeps_weights_without_momentum(tmp_path):
    blobs = {"conv1_w": np.ones((4, 3, 3, 3), np.float32), "conv1_w_momentum": np.zeros(1)}
    path = _write_pickle(tmp_path / "c2.pkl", {"blobs": blobs}, 2)
    checkpoint = load_checkpoint_file(path)
    assert list(checkpoint["model"]) == ["conv1_w"]
    assert checkpoint["__author__"] == "Caffe2" and checkpoint["matching_heuristics"]


def _bad_files(tmp_path) -> dict[str, str]:
    good = tmp_path / "good.pth"
    torch.save({"model": _weights(0)}, good)
    data = good.read_bytes()
    files = {
        "empty.pth": b"",
        "truncated.pth": data[: len(data) // 2],
        "text.pth": b"these are not weights\n",
        "text.pkl": b"these are not weights\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"model": {"conv.weight": "a string"}}, tmp_path / "strings.pth")
    torch.save({}, tmp_path / "nothing.pth")
    names = [*files, "list.pth", "strings.pth", "nothing.pth", "missing.pth"]
    return {name: str(tmp_path / name) for name in names}


def test_unreadable_or_non_checkpoint_files_are_input_errors(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(InputError, match=f"(?i)checkpoint '{re.escape(path)}'") as error:
            SsdetCheckpointer(Tiny()).load(path)
        assert "\n" not in str(error.value), name
        assert not is_loadable_checkpoint(path), name


def test_save_is_atomic_and_cleans_up_killed_saves(tmp_path):
    checkpointer = SsdetCheckpointer(Tiny(), str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    saved = (tmp_path / "model_0000009.pth").read_bytes()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    # The temporary file a save killed by SIGKILL leaves behind.
    (tmp_path / ".model_0000009.pth.k1ll3d.tmp").write_bytes(b"partial")
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        checkpointer.save("model_0000009", iteration=9, hook=lambda: None)  # fails mid-write
    assert (tmp_path / "model_0000009.pth").read_bytes() == saved
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert is_loadable_checkpoint(str(tmp_path / "model_0000009.pth"))


def _run_folder(tmp_path) -> tuple[SsdetCheckpointer, dict[int, dict]]:
    checkpointer = SsdetCheckpointer(Tiny(), str(tmp_path))
    weights = {}
    for iteration in (9, 19):
        checkpointer.model.load_state_dict(_weights(iteration))
        weights[iteration] = _weights(iteration)
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    return checkpointer, weights


# An empty tag, a tag naming a missing file, a tag naming a truncated file.
BROKEN_TAGS = [("", None), ("model_0000029.pth", None), ("model_final.pth", "model_final.pth")]


@pytest.mark.parametrize("tag,truncate", BROKEN_TAGS)
def test_broken_last_checkpoint_falls_back_to_the_newest_that_loads(
    tmp_path, warnings_of_checkpointer, tag, truncate
):
    checkpointer, weights = _run_folder(tmp_path)
    if truncate:
        (tmp_path / truncate).write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text(tag)
    model = Tiny()
    resumed = SsdetCheckpointer(model, str(tmp_path))
    assert resumed.has_checkpoint()
    assert resumed.resume_or_load("", resume=True)["iteration"] == 19
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights[19].items())
    messages = [r.getMessage() for r in warnings_of_checkpointer]
    assert len(messages) == 1, messages  # asked for several times, logged once
    assert "resuming from model_0000019.pth instead" in messages[0]

    (tmp_path / "model_0000019.pth").write_bytes(b"")
    assert resumed.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    (tmp_path / "model_0000009.pth").write_bytes(b"")
    assert not resumed.has_checkpoint()
    assert "nothing to resume from" in warnings_of_checkpointer[-1].getMessage()


def test_no_tag_means_no_checkpoint(tmp_path):
    _run_folder(tmp_path)
    os.remove(tmp_path / "last_checkpoint")
    assert not SsdetCheckpointer(Tiny(), str(tmp_path)).has_checkpoint()
