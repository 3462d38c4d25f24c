"""Test-wide setup: a private datasets root holding a tiny generated mini world.

The environment is set before any test module imports ssdet, because ssdet registers its
datasets under ``$DETECTRON2_DATASETS`` at import time (as Detectron2 does).
"""

import atexit
import os
import shutil
import tempfile

import pytest

_ROOT = tempfile.mkdtemp(prefix="ssdet-tests-")
# Every session generates its own world; leaving it behind fills /tmp over many runs.
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
os.environ["DETECTRON2_DATASETS"] = os.path.join(_ROOT, "datasets")
os.environ["SSDET_CACHE_DIR"] = os.path.join(_ROOT, "cache")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_imagenet_counts(split: str) -> list[int]:
    """Images per class of the tiny world's mini-ImageNet ``split`` ("train" or "val"), in class
    order: the generator gives the novel classes fewer images (their share of all images)."""
    from ssdet.data.mini_world import _TINY_IMAGENET, IMAGENET_DOMAINS, images_per_class

    per_class = _TINY_IMAGENET[f"{split}_per_class"]
    return list(images_per_class(per_class, IMAGENET_DOMAINS["coco"]["novel_fraction"]).values())


class RunsCommand:
    """Unpickling it runs a shell command: what a hostile checkpoint holds."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="session")
def tiny_world() -> str:
    """The datasets root, with the tiny mini world generated in it (once per session)."""
    from ssdet.data.mini_world import generate_mini_world

    root = os.environ["DETECTRON2_DATASETS"]
    generate_mini_world(root, tiny=True)
    return root


# The column files of a pseudo-label store, as the format documents them
# (ssdet/data/pseudo_labels/store.py).
STORE_COLUMNS = (
    "image_offsets",
    "image_ids",
    "heights",
    "widths",
    "file_name_offsets",
    "file_name_bytes",
    "boxes",
    "scores",
    "classes",
)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on
    2 shared cores, two OpenMP threads stall whenever one is preempted."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
