"""Checks of the environment ssdet runs in."""

import importlib.util

_INSTALL_HINT = (
    "ssdet needs Detectron2, which is not on the package registry under its own name. Either run "
    "`make setup` in the ssdet checkout (it installs the registry build `sal-detectron2==0.7.2`, "
    "see README 'Install'), or install upstream Detectron2 from source: "
    "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
)


def check_detectron2() -> None:
    """Raise an ImportError that says how to install Detectron2 when it is not importable."""
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(_INSTALL_HINT)
