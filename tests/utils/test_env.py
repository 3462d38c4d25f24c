"""The Detectron2 check that runs at ``import ssdet``: missing, too old, untested, supported."""

import importlib.util

import detectron2
import pytest

from ssdet.utils import env


@pytest.mark.parametrize("version", ["0.7.2", "0.7.0", "0.7.3+cu121", "0.6"])
def test_supported_versions_pass_silently(version, recwarn):
    env.check_detectron2_version(version)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("version", ["0.5", "0.4.1"])
def test_an_older_detectron2_is_an_import_error_naming_the_supported_version(version):
    with pytest.raises(ImportError, match=r"needs Detectron2 0\.7\.x") as error:
        env.check_detectron2_version(version)
    assert f"this one is {version}" in str(error.value) and "sal-detectron2==0.7.2" in str(
        error.value
    )


@pytest.mark.parametrize("version", ["0.8.0", "1.0", "unknown"])
def test_a_newer_or_unreadable_version_warns(version):
    with pytest.warns(
        RuntimeWarning, match=rf"tested with Detectron2 0\.7\.x.*this one is {version}"
    ):
        env.check_detectron2_version(version)


def test_import_time_check_reads_the_installed_version(monkeypatch):
    env.check_detectron2()  # this environment's Detectron2 is supported
    monkeypatch.setattr(detectron2, "__version__", "0.5", raising=False)
    with pytest.raises(ImportError, match="this one is 0.5"):
        env.check_detectron2()


def test_missing_detectron2_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="make setup"):
        env.check_detectron2()
