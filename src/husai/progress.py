"""The one progress bar of HUSAI's long loops (model training, SAE training, study units).

:func:`progress_bar` is a context manager that yields a :class:`Bar`: a rich progress bar
with a description, the bar, ``done/total``, elapsed time, an ETA and a free-text status
(e.g. live accuracies). With ``enabled=False`` the same object does nothing, so a loop
is written once whether or not it shows progress. The bar goes to stderr by default,
leaving stdout to what a command prints as its result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Bar:
    """One task of a rich progress display, or nothing (``progress`` None)."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress, self._task = progress, task

    def update(self, completed: int, status: str | None = None) -> None:
        """Set the number of finished steps and, optionally, the status text."""
        if self._progress is None or self._task is None:
            return
        fields: dict[str, Any] = {} if status is None else {"status": status}
        self._progress.update(self._task, completed=completed, **fields)

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, steps)

    def print(self, *objects: Any) -> None:
        """Print above the bar (rich markup allowed); a disabled bar prints nothing."""
        if self._progress is not None:
            self._progress.console.print(*objects)


@contextmanager
def progress_bar(
    description: str,
    total: int,
    *,
    enabled: bool = True,
    completed: int = 0,
    console: Console | None = None,
    transient: bool = False,
) -> Iterator[Bar]:
    """Show a progress bar for the ``with`` block; ``transient`` removes it at the end."""
    if not enabled:
        yield Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True),
        transient=transient,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed, status="")
        yield Bar(progress, task)
