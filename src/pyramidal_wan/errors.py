"""User-facing errors: each carries a one-line message naming the problem and the fix.

The CLI prints these as one line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class PyramidalWanError(Exception):
    """Base of the errors the CLI reports as one line."""


class InputError(PyramidalWanError, ValueError):
    """Bad user input (a size, a schedule, a flag): the message says what is wrong and how to fix it."""


class CheckpointError(InputError):
    """A missing, incomplete or corrupt checkpoint or model folder."""


class TrainingDiverged(PyramidalWanError, RuntimeError):
    """A non-finite loss: training stopped, and the last good checkpoint was kept."""
