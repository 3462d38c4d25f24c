"""The output-folder lock: one holder at a time, named by PID; a dead holder's lock is taken."""

import multiprocessing
import os

import pytest

from ssdet.utils.errors import InputError
from ssdet.utils.lock import LOCK_FILE, output_dir_lock


def _hold(output_dir: str, locked, release) -> None:
    with output_dir_lock(output_dir):
        locked.set()
        release.wait(60)


def _holder(output_dir: str):
    """A live process holding the lock of ``output_dir`` (forked: no interpreter start-up)."""
    context = multiprocessing.get_context("fork")
    locked, release = context.Event(), context.Event()
    process = context.Process(target=_hold, args=(output_dir, locked, release))
    process.start()
    assert locked.wait(30), "the holder did not take the lock"
    return process, release


def test_a_second_run_is_refused_with_the_holders_pid(tmp_path):
    out = str(tmp_path / "run")
    process, release = _holder(out)
    try:
        with pytest.raises(InputError, match=rf"in use by another run: pid {process.pid} \("):
            with output_dir_lock(out):
                pass
    finally:
        release.set()
        process.join(30)
    with output_dir_lock(out):  # released when the holder's block ended
        pass


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path):
    out = str(tmp_path / "run")
    process, _ = _holder(out)
    process.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
    process.join(30)
    assert f"pid {process.pid} " in open(os.path.join(out, LOCK_FILE)).read()
    with output_dir_lock(out):
        assert open(os.path.join(out, LOCK_FILE)).read().startswith(f"pid {os.getpid()} ")


def test_one_holder_also_within_a_process(tmp_path):
    out = str(tmp_path / "run")
    with output_dir_lock(out):
        with pytest.raises(InputError, match="Wait for it to finish, or choose another OUTPUT_DIR"):
            with output_dir_lock(out):
                pass
    with output_dir_lock(out):
        pass
