"""The one progress bar: it counts, shows a status, prints above itself, or does nothing."""

from __future__ import annotations

import io

from rich.console import Console

from husai.progress import progress_bar


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=120, force_terminal=False), buf


def test_the_bar_counts_and_shows_its_status_and_messages() -> None:
    console, buf = _console()
    with progress_bar("train", 10, console=console) as bar:
        bar.update(4, "test acc 0.500")
        bar.advance(6)
        bar.print("a line above the bar")
    text = buf.getvalue()
    assert "a line above the bar" in text
    assert "10/10" in text and "test acc 0.500" in text and "train" in text


def test_a_disabled_bar_writes_nothing() -> None:
    console, buf = _console()
    with progress_bar("train", 10, enabled=False, console=console) as bar:
        bar.update(4, "status")
        bar.advance()
        bar.print("message")
    assert buf.getvalue() == ""
