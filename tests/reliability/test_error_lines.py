"""Bad input to the tools is one ``error:`` line, before any work, never a traceback (issue 16,
items 8 and 9): an unknown augmentation policy, a read-only output folder, annotations of missing
images, and a pseudo-label store whose bytes changed (``pseudo_label.py --verify``).

The tool scripts run in this process (``runpy``, as ``python tools/<tool>`` runs them), where
importing torch and Detectron2 is paid once; only the read-only folder needs a process of its own.
"""

import json
import os
import runpy
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from ssdet.data import register_coco_dataset
from ssdet.data.mini_world import MINI_COCO_CLASSES

from ..conftest import REPO
from ..data.pseudo_labels.conftest import write_store
from .harness import INSTANT, error_lines, finish, start_tool

# Two iterations at most, should a check let the run through.
TRAIN = ("--config", INSTANT, "SOLVER.MAX_ITER", "2")


def run_script(tool: str, *args: str) -> str | int | None:
    """Run ``tools/<tool> ARGS`` in this process; its exit code or message (``sys.exit``)."""
    argv = sys.argv
    sys.argv = [os.path.join(REPO, "tools", tool), *args]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = argv
    return 0


def _one_error_line(code) -> str:
    assert isinstance(code, str) and code.startswith("error: "), code
    assert "\n" not in code, code
    return code


def test_unknown_policy_before_training(tiny_world, tmp_path):
    out = tmp_path / "s9"
    code = run_script("train_net.py", *TRAIN, "SSDET.AUGMENT.POLICY", "S9", "OUTPUT_DIR", str(out))
    error = _one_error_line(code)
    assert error == "error: Unknown augmentation policy 'S9'; valid policies: D2, S1, S2, S3, S4"
    assert not os.path.exists(out / "metrics.json")  # no iteration ran


def test_annotations_of_missing_images(tiny_world, tmp_path):
    images = tmp_path / "train"
    shutil.copytree(os.path.join(tiny_world, "mini_coco", "train"), images)
    json_file = os.path.join(tiny_world, "mini_coco", "annotations", "instances_train.json")
    names = sorted(d["file_name"] for d in json.load(open(json_file))["images"])
    for name in names[1:4]:
        os.remove(images / name)
    register_coco_dataset("mini_coco_train_lost", json_file, str(images), MINI_COCO_CLASSES)
    out = tmp_path / "lost"
    train = ("DATASETS.TRAIN", "('mini_coco_train_lost',)")
    code = run_script("train_net.py", *TRAIN, *train, "OUTPUT_DIR", str(out))
    error = _one_error_line(code)
    assert error.startswith(
        f"error: Dataset 'mini_coco_train_lost': 3 of the {len(names)} images that {json_file!r} "
        f"annotates are missing from {str(images)!r} (first: {', '.join(names[1:4])})."
    )
    assert not os.path.exists(out / "metrics.json")


def test_verify_names_the_changed_column(tmp_path):
    sound = write_store(tmp_path, [("a.jpg", 8, 8, [(0, 0, 4, 4, 0.9, 0), (1, 1, 3, 3, 0.8, 1)])])
    assert run_script("pseudo_label.py", "--verify", sound.path) == 0
    # A score that is still valid: only the checksum tells the change.
    scores = np.load(os.path.join(sound.path, "scores.npy"), mmap_mode="r+")
    scores[1] = 0.7
    scores.flush()
    del scores
    error = _one_error_line(run_script("pseudo_label.py", "--verify", sound.path))
    assert error.startswith(
        f"error: pseudo-label store {sound.path} fails its checksums: scores.npy differ from the "
        "SHA-256 recorded in metadata.json"
    )
    code = run_script("pseudo_label.py", "--verify", str(tmp_path / "none"))
    assert _one_error_line(code).startswith("error: incomplete or not a pseudo-label store: ")


def _owner_only_prefix() -> tuple[str, ...] | None:
    """A command prefix under which writes obey the permission bits; None where there is none.

    Root writes into read-only folders; in a user namespace of its own it does not (it keeps its
    files, but not its override of their permissions).
    """
    if os.geteuid() != 0:
        return ()
    if shutil.which("unshare") is None:
        return None
    ok = subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0
    return ("unshare", "--user") if ok else None


def test_read_only_output_folder(tiny_world, tmp_path):
    prefix = _owner_only_prefix()
    if prefix is None:
        pytest.skip("root ignores the folder's permissions here, and has no user namespace")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    returncode, output = finish(
        start_tool("train_net.py", *TRAIN, "OUTPUT_DIR", str(folder), prefix=prefix)
    )
    errors = error_lines(output)
    assert returncode == 1 and len(errors) == 1, output[-3000:]
    assert "Traceback" not in output
    assert errors[0].startswith(
        f"error: Cannot write to the output folder {folder}: Permission denied"
    )
    assert os.listdir(folder) == []
