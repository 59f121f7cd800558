"""User-facing errors. The CLI prints ``str(err)`` (one line) and exits 2, no traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a config, a CLI argument, a file on disk."""


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the message says where and what was kept."""


class DiskFullError(UserError):
    """No space left on device. Atomic writes keep no partial file, so a rerun resumes."""

    @classmethod
    def writing(cls, path: object) -> DiskFullError:
        return cls(
            f"disk full while writing {path}; no partial files were kept; "
            "free space and rerun to resume"
        )


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study, with a message that says how to resume; the CLI exits 130."""
