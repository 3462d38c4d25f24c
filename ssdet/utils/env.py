"""Checks of the environment ssdet runs in."""

import importlib.util
import warnings

from packaging.version import InvalidVersion, Version

_INSTALL_HINT = (
    "ssdet needs Detectron2, which is not on the package registry under its own name. Either run "
    "`make setup` in the ssdet checkout (it installs the registry build `sal-detectron2==0.7.2`, "
    "see docs/install.md), or install upstream Detectron2 from source: "
    "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
)
# The Detectron2 that ssdet is verified with: the registry build sal-detectron2 0.7.x, which is
# upstream commit a59f0563 (2024-04-17). An upstream source build of that code says "0.6": upstream
# has not changed its version string since 2021, so 0.6 cannot be told apart by version and is
# accepted as such a build.
SUPPORTED_DETECTRON2 = "0.7.x (sal-detectron2==0.7.2, or an upstream source build, which says 0.6)"
_OLDEST = Version("0.6")


def check_detectron2() -> None:
    """Check that Detectron2 is importable and of a supported version.

    Raises:
        ImportError: no Detectron2 (the message says how to install it), or one older than 0.6.

    Warns:
        RuntimeWarning: a Detectron2 newer than 0.7.x or with an unreadable version: untested.
    """
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(_INSTALL_HINT)
    import detectron2

    check_detectron2_version(getattr(detectron2, "__version__", "unknown"))


def check_detectron2_version(version: str) -> None:
    """Refuse a Detectron2 older than ssdet's APIs, warn about one newer than it was tested with.

    Args:
        version: ``detectron2.__version__``.
    """
    try:
        parsed = Version(version)
    except InvalidVersion:
        parsed = None
    if parsed is not None and parsed.release[:2] in ((0, 6), (0, 7)):
        return
    if parsed is not None and parsed < _OLDEST:
        raise ImportError(
            f"ssdet needs Detectron2 {SUPPORTED_DETECTRON2}; this one is {version}, older than "
            f"the APIs ssdet uses. {_INSTALL_HINT}"
        )
    warnings.warn(
        f"ssdet is tested with Detectron2 {SUPPORTED_DETECTRON2}; this one is {version}, which "
        "may have changed the Detectron2 APIs that ssdet subclasses.",
        RuntimeWarning,
        stacklevel=3,
    )
