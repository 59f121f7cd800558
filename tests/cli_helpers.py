"""Run the ``husai`` CLI in-process for tests (``tests/`` is on sys.path via its conftest)."""

from __future__ import annotations

from typer.testing import CliRunner

from husai.cli import app


def invoke_husai(*args: object) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``husai ARGS``; an exception other than an exit fails."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr
