"""Assemble the study report: nine sections, rendered to report.html and report.md.

Each section is built by its own function from the run store; a section whose
builder raises is replaced by a visible note naming the error (and the error is
logged), so one bad file never costs the whole report. HTML embeds every figure as
a base64 PNG; Markdown links the same PNGs, written to ``report_files/`` beside it.
All files are written atomically.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from husai.errors import UserError
from husai.io import atomic_write_bytes, atomic_write_text
from husai.report import guidelines, sections_lm
from husai.report.answer import answer
from husai.report.render import (
    Block,
    Bullets,
    Note,
    Para,
    Section,
    fmt,
    iter_figures,
    render_html,
    render_markdown,
)
from husai.report.sections_consensus import TITLE as CONSENSUS_TITLE
from husai.report.sections_consensus import consensus_section, has_consensus
from husai.report.sections_gt import geometry_section, ground_truth_section
from husai.report.sections_latents import latents_section
from husai.report.sections_levels import levels_section, levels_table
from husai.report.sections_misc import failures_section
from husai.report.sections_model import activations_section, model_section, not_grokked
from husai.report.sections_stability import dynamics_section, stability_section, verdict_section
from husai.report.store import MARKERS, RunView, is_run_store
from husai.report.verdict import DEAD_MAX

log = logging.getLogger(__name__)
FIGURE_DIR = "report_files"


def build_report(
    run_dir: Path, *, stability_threshold: float = 0.7, ev_threshold: float = 0.9
) -> Path:
    """Write ``run_dir/report.html`` (self-contained) and ``run_dir/report.md``; return the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"report: run directory {run_dir} does not exist")
    for name, v in (("stability_threshold", stability_threshold), ("ev_threshold", ev_threshold)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1):
            raise UserError(f"report: {name} must be in (0, 1], got {v!r}")
    if not is_run_store(run_dir):
        raise UserError(
            f"{run_dir}: not a run store (expected one of {', '.join(MARKERS)}, "
            "as written by `husai run` or `husai sweep`)"
        )
    store = RunView.open(run_dir)
    st, ev = float(stability_threshold), float(ev_threshold)
    title = f"HUSAI study report: {_study_name(store)}"
    if sections_lm.is_language_model(store):
        sections = build_lm_sections(store, st, ev)
        return write_report(
            run_dir,
            title + f", {sections_lm.describe_source(store)}",
            _lm_intro(store, st, ev),
            sections,
        )
    sections = build_sections(store, st, ev)
    task = store.task()
    title += f", task {task}" if task else ""
    return write_report(run_dir, title, _intro(store, st, ev), sections)


def answer_paragraph(store: RunView, st: float, ev: float) -> Block | None:
    """The one-paragraph answer (``husai.report.answer``), or None when it cannot be built."""
    try:
        levels = levels_table(store)
    except Exception:  # the levels section says why; the answer keeps the direction level
        log.exception("report: levels table failed")
        levels = None
    try:
        return answer(store, st, ev, levels)
    except Exception:  # one broken input must not cost the whole report
        log.exception("report: the answer paragraph failed")
        return None


def write_report(run_dir: Path, title: str, intro: list[Block], sections: list[Section]) -> Path:
    """``report.html`` (self-contained), ``report.md`` and its figures; stale figures removed."""
    _unique_figure_names(sections)
    fig_dir = run_dir / FIGURE_DIR
    names = set()
    for fig in iter_figures(sections):
        atomic_write_bytes(fig_dir / f"{fig.name}.png", fig.png)
        names.add(f"{fig.name}.png")
    for stale in fig_dir.glob("*.png") if fig_dir.is_dir() else []:
        if stale.name not in names:
            stale.unlink()
    atomic_write_text(run_dir / "report.md", render_markdown(title, intro, sections, FIGURE_DIR))
    html_path = run_dir / "report.html"
    atomic_write_text(html_path, render_html(title, intro, sections))
    log.info("report: wrote %s and report.md", html_path)
    return html_path


def build_sections(store: RunView, st: float, ev: float) -> list[Section]:
    builders: list[tuple[str, str, Callable[[], Section]]] = [
        ("1. The model", "model", lambda: model_section(store)),
        ("2. The activations", "activations", lambda: activations_section(store)),
        ("3. Stability", "stability", lambda: stability_section(store, st, ev)),
        ("4. The verdict", "verdict", lambda: verdict_section(store, st, ev)[0]),
        ("5. Ground truth", "ground-truth", lambda: _ground_truth_and_levels(store)),
        ("6. Dynamics", "dynamics", lambda: dynamics_section(store)),
        ("7. Geometry", "geometry", lambda: geometry_section(store)),
        ("8. Guidelines", "guidelines", lambda: guidelines_section(store, st, ev)),
        ("9. Failures and provenance", "failures", lambda: failures_section(store)),
    ]
    return sections_lm.renumber(
        [_safe(title, anchor, fn) for title, anchor, fn in _with_consensus(store, builders, st, ev)]
    )


def build_lm_sections(store: RunView, st: float, ev: float) -> list[Section]:
    """A language-model study's sections: no ground truth, its features shown in text."""
    builders: list[tuple[str, str, Callable[[], Section]]] = [
        ("1. The language model", "model", lambda: sections_lm.lm_model_section(store)),
        ("3. Stability", "stability", lambda: stability_section(store, st, ev)),
        ("4. The verdict", "verdict", lambda: verdict_section(store, st, ev)[0]),
        ("5. Features in text", "text", lambda: _text_and_latents(store)),
        ("6. Dynamics", "dynamics", lambda: dynamics_section(store)),
        ("7. Guidelines", "guidelines", lambda: guidelines_section(store, st, ev)),
        ("8. Failures and provenance", "failures", lambda: failures_section(store)),
    ]
    builders = _with_consensus(store, builders, st, ev)
    return sections_lm.renumber([_safe(title, anchor, fn) for title, anchor, fn in builders])


Builders = list[tuple[str, str, Callable[[], Section]]]


def _with_consensus(store: RunView, builders: Builders, st: float, ev: float) -> Builders:
    """The consensus section (when the study built one) before the guidelines."""
    if not has_consensus(store):
        return builders
    at = next(i for i, b in enumerate(builders) if b[1] == "guidelines")
    section = (f"0. {CONSENSUS_TITLE}", "consensus")
    return [*builders[:at], (*section, lambda: consensus_section(store, st, ev)), *builders[at:]]


def _text_and_latents(store: RunView) -> Section:
    sec = sections_lm.text_section(store)
    sec.subsections.append(
        _safe("Per-feature stability", "latents", lambda: latents_section(store))
    )
    return sec


def _ground_truth_and_levels(store: RunView) -> Section:
    """Section 5 with stability at every level (plane, frequency, ...) as its last part."""
    sec = ground_truth_section(store)
    levels = _safe("Stability at every level", "levels", lambda: levels_section(store))
    latents = _safe("Per-feature stability", "latents", lambda: latents_section(store))
    sec.subsections += [levels, latents]
    return sec


def _safe(title: str, anchor: str, fn: Callable[[], Section]) -> Section:
    try:
        return fn()
    except Exception as err:  # one broken input must not cost the whole report
        log.exception("report: section %r failed", title)
        msg = f"This section could not be built: {err.__class__.__name__}: {err}"
        return Section(title, anchor).add(Note(msg))


def guidelines_section(store: RunView, st: float, ev: float) -> Section:
    sec = Section("8. Guidelines", "guidelines")
    ranks: dict[str, float] = {}
    for a in store.acts:
        rank = a.meta.get("effective_rank")
        if isinstance(rank, (int, float)) and (a.hook not in ranks or a.checkpoint == "final"):
            ranks[a.hook] = float(rank)
    warning = not_grokked(store.model_metrics)
    if warning:
        sec.add(Note(warning))
    return sec.add(*guidelines.guidelines(store.summary, store.results, ranks, st, ev))


def _study_name(store: RunView) -> str:
    prov = store.provenance or {}
    study = prov.get("study") if isinstance(prov.get("study"), dict) else {}
    return str(study.get("name") or store.root.resolve().name)


def _intro(store: RunView, st: float, ev: float) -> list[Block]:
    task = store.task()
    head = answer_paragraph(store, st, ev)
    blocks: list[Block] = [] if head is None else [head]
    lead = f"Task: {task}; every SAE reads the model trained on it. " if task else ""
    return blocks + _method(store, st, ev, lead)


def _method(
    store: RunView, st: float, ev: float, lead: str, skip: str | None = None
) -> list[Block]:
    """Where the numbers come from and the verdict's thresholds; what inputs are missing
    (but those under ``skip``, which this kind of study does not have)."""
    blocks: list[Block] = [
        Para(
            lead + f"Run store: {store.root}. Every number below is read from the run's tables "
            f"(results, pairs, summary, dynamics parquet; model and activation JSON) or computed "
            f"from its SAE weights. Verdict thresholds: alive-only PW-MCC >= {fmt(st)}, "
            f"explained variance >= {fmt(ev)}, the CI lower bound above the hardest random "
            f"baseline (the largest of the unit-sphere, principal-subspace and activation-row "
            f"baselines), and at most {DEAD_MAX:.0%} of the dictionary dead."
        )
    ]
    missing = {k: v for k, v in store.missing.items() if skip is None or not k.startswith(skip)}
    if missing:
        items = [missing[k] for k in sorted(missing)]
        blocks += [
            Note("Some inputs are missing; the sections that need them say so."),
            Bullets(items),
        ]
    return blocks


def _lm_intro(store: RunView, st: float, ev: float) -> list[Block]:
    try:
        head = answer(store, st, ev, None)  # no ground truth, so no levels beyond directions
    except Exception:  # one broken input must not cost the whole report
        log.exception("report: the answer paragraph failed")
        head = None
    blocks: list[Block] = [] if head is None else [head]
    return [*blocks, sections_lm.source_intro(store), *_method(store, st, ev, "", skip="model/")]


def _unique_figure_names(sections: list[Section]) -> None:
    seen: dict[str, int] = {}
    for fig in iter_figures(sections):
        base = "".join(c if c.isalnum() or c in "-_" else "_" for c in fig.name)
        n = seen.get(base, 0)
        seen[base] = n + 1
        fig.name = base if n == 0 else f"{base}_{n}"
