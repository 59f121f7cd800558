"""A suite: the same grid on several tasks, one study each, compared side by side.

A suite file names member studies (each with its own task and committed model) and one
``grid`` that replaces every member's grid, so the tasks are compared cell for cell::

    name: tasks
    studies: [default.yaml, sub.yaml, mul.yaml]   # relative to this file, or shipped
    grid: [...]                                   # as in a study

``run_suite`` writes ``<out>/studies/<name>-<member>.yaml`` (each member resolved, its grid
replaced), runs each member into ``<out>/<member>/`` with :func:`run_study` (resumable,
locked, exactly as a study alone), then writes the comparison
(:func:`husai.report.compare.build_comparison`) to ``<out>/report.html`` and ``report.md``.
``--set`` overrides apply to every member.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from rich.console import Console

from husai.config import FrozenConfig, StudyConfig, SweepConfig, load_config, read_mapping
from husai.errors import UserError
from husai.resources import locate

SUITE_KEY = "studies"


class SuiteConfig(FrozenConfig):
    """Member studies and the one grid they all run."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    studies: Annotated[list[str], Field(min_length=2)]
    """Study YAMLs, relative to the suite file (or shipped with husai)."""
    grid: Annotated[list[SweepConfig], Field(min_length=1)]
    """Replaces every member's grid, so every task runs the same cells."""


def is_suite(path: str | Path) -> bool:
    """Whether ``path`` (resolved like a study path) is a suite file (a ``studies`` key)."""
    file = locate(path)
    return file.is_file() and SUITE_KEY in read_mapping(file)


def load_members(
    suite_path: str | Path, overrides: list[str] | None = None
) -> tuple[SuiteConfig, list[StudyConfig]]:
    """The suite and its members (their grids replaced); a clash is one UserError line."""
    file = locate(suite_path)
    suite = load_config(SuiteConfig, file)
    grid = [g.model_dump(mode="json") for g in suite.grid]
    members = []
    for ref in suite.studies:
        member_file = file.parent / ref if (file.parent / ref).is_file() else locate(ref)
        member = StudyConfig.from_yaml(member_file, overrides)
        raw: dict[str, Any] = member.model_dump(mode="json")
        raw.update(name=f"{suite.name}-{member.name}", grid=grid, transformer_config=None)
        members.append(StudyConfig.model_validate(raw))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise UserError(f"{file}: studies: two members share a name ({', '.join(names)})")
    return suite, members


def member_dir(root: Path, suite: SuiteConfig, member: StudyConfig) -> Path:
    return root / member.name.removeprefix(f"{suite.name}-")


def run_suite(
    suite_path: str | Path,
    *,
    out: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    overrides: list[str] | None = None,
    report: bool = True,
    console: Console | None = None,
) -> Path:
    """Run (or resume) every member, then compare them; returns the comparison report path."""
    from husai.experiments.runner import run_study
    from husai.report.compare import build_comparison

    console = console or Console(stderr=True)
    suite, members = load_members(suite_path, overrides)
    root = Path(out) if out else Path("runs") / suite.name
    stores = []
    for i, member in enumerate(members, 1):
        path = root / "studies" / f"{member.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        member.to_yaml(path)
        console.print(f"[bold]suite {suite.name}[/]: study {i}/{len(members)} ({member.name})")
        store = member_dir(root, suite, member)
        run_study(
            path, out=store, executor=executor, address=address, report=report, console=console
        )
        stores.append(store)
    if not report:
        return root
    return build_comparison(root, stores, title=suite.name)
