"""Hostile files for the reliability tests."""

import pickle

import pytest

from ..conftest import RunsCommand


@pytest.fixture
def evil_pickle(tmp_path) -> tuple[str, str]:
    """A model-zoo-like ``.pkl`` whose loading would run ``touch MARKER``; (file, marker)."""
    marker = str(tmp_path / "code_ran")
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.x": RunsCommand(marker)}, "__author__": "x"}, f)
    return path, marker
