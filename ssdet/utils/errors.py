"""The one exception type for bad user input (files, datasets, configs).

Tools catch it at the top and print its message without a stack trace: the message itself names
the bad input and says how to fix it.
"""

import contextlib
import sys
from collections.abc import Iterator


class InputError(ValueError):
    """A missing file, unreadable dataset, inconsistent config or other bad user input."""


@contextlib.contextmanager
def exit_on_input_error() -> Iterator[None]:
    """Exit with the one line ``error: <message>`` (status 1) on an :class:`InputError`.

    Every tool runs its work under it, so that bad input never ends in a stack trace.
    """
    try:
        yield
    except InputError as e:
        sys.exit(f"error: {e}")
