"""One run per output folder: an exclusive lock on a file in the folder that names its holder.

Two runs writing one folder interleave their checkpoints, shards and metrics: the second resumes
from the first's files and the results mix both. Every tool that writes an output folder
(train_net, self_train, pseudo_label, pretrain, ablate) holds this lock while it runs.
"""

import contextlib
import errno
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Iterator

from ssdet.utils.errors import InputError

LOCK_FILE = ".ssdet.lock"


@contextlib.contextmanager
def output_dir_lock(output_dir: str, advice: str = "") -> Iterator[int]:
    """Hold ``output_dir``'s lock for the block; the folder is created if missing.

    The lock is an ``flock`` on ``<output_dir>/.ssdet.lock``. The kernel releases it when every
    process holding it has exited, however it exited (a kill included), so the file of a dead
    holder is simply taken over; the file's text (PID, program, start time) only names the
    holder in the error. Processes forked inside the block (DataLoader workers, or the runs of
    ``tools/ablate.py``, which passes the descriptor on) hold it with their parent.

    Args:
        output_dir: the folder.
        advice: the end of the error message, what to do instead; default: wait or choose another
            ``OUTPUT_DIR``.

    Yields:
        The lock file's descriptor.

    Raises:
        InputError: another live process holds the lock (the message names its PID), or the
            folder cannot be created or written.
    """
    fd = _open_lock_file(output_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise InputError(
                f"{output_dir} is in use by another run: {_describe_holder(fd)}. "
                + (advice or "Wait for it to finish, or choose another OUTPUT_DIR.")
            ) from e
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({program}), since {since}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)


def _open_lock_file(output_dir: str) -> int:
    """The lock file's descriptor; InputError when the folder does not take new files."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        # The lock file of an earlier run opens even in a folder made read-only since: only a new
        # file shows that the run's checkpoints and logs can be written.
        tempfile.TemporaryFile(dir=output_dir).close()
        return os.open(os.path.join(output_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(
            f"Cannot write to the output folder {output_dir}: {e.strerror or e}. Choose another "
            "output folder, or make this one writable."
        ) from e


def _describe_holder(fd: int) -> str:
    text = os.pread(fd, 300, 0).decode(errors="replace").strip()
    if not text:
        return "a process that has not written its PID yet"
    words = text.split()
    if len(words) > 1 and words[0] == "pid" and words[1].isdigit() and not _alive(int(words[1])):
        # The lock outlives its taker in the processes it started.
        return f"{text}; that process has exited, but one it started still holds the lock"
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
