"""The tools run as a user runs them: a subprocess each, its output and its ``error:`` lines."""

import os
import subprocess
import sys

from ..conftest import REPO

INSTANT = os.path.join(REPO, "configs", "mini", "retinanet_instant_test.yaml")


def start_tool(
    tool: str, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.Popen:
    """``python tools/<tool> ARGS`` with one torch thread, started (not waited for).

    Args:
        env: variables set on top of this process's environment.
        prefix: a command that runs the tool, e.g. ``("unshare", "--user")``.
    """
    return subprocess.Popen(
        [*prefix, sys.executable, os.path.join(REPO, "tools", tool), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """Wait for a started tool; its return code and its stdout and stderr together."""
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout + stderr


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]
