"""User-facing errors. The CLI prints ``str(err)`` (one line) and exits 2, no traceback."""


class UserError(ValueError):
    """Bad input from the user: a config, a CLI argument, a file on disk."""


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the message says where and what was kept."""
