"""The one exception type for bad user input (files, datasets, configs).

Tools catch it at the top and print its message without a stack trace: the message itself names
the bad input and says how to fix it.
"""


class InputError(ValueError):
    """A missing file, unreadable dataset, inconsistent config or other bad user input."""
