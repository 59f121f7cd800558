"""Section 9: failures (failures.json and results rows whose status is not 'ok'), training
convergence (:mod:`husai.report.sections_convergence`) and provenance (provenance.json:
configs, package versions, git commit, machine).

failures.json and provenance.json are shown as they are, flattened into tables; values are
truncated for display only (the files stay the source of truth).
"""

from __future__ import annotations

from typing import Any

from husai.report.render import Code, Note, Para, Section, Table, fmt_param
from husai.report.sections_convergence import convergence_section
from husai.report.store import RunView

MAX_CELL = 300


def _short(v: Any) -> str:
    text = "" if v is None else str(v)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."


def failures_section(store: RunView) -> Section:
    sec = Section("9. Failures and provenance", "failures")
    sec.subsections += [_failures(store), convergence_section(store), _provenance(store)]
    return sec


def _failures(store: RunView) -> Section:
    sub = Section("Failures", "failures-list")
    f = store.failures
    if f is None:
        sub.add(Note(store.missing.get("failures.json", "failures.json is missing")))
    elif isinstance(f, list) and not f:
        sub.add(Para("failures.json lists no failed unit."))
    else:
        items = f if isinstance(f, list) else [{"key": k, "value": v} for k, v in dict(f).items()]
        dicts = [i if isinstance(i, dict) else {"entry": i} for i in items]
        cols = list(dict.fromkeys(k for d in dicts for k in d))
        sub.add(
            Table(
                cols,
                [[_short(d.get(c)) for c in cols] for d in dicts],
                f"failures.json: {len(dicts)} failed unit(s)",
            )
        )
    r = store.results
    if r is None or "status" not in getattr(r, "columns", []):
        sub.add(
            Note(
                "results.parquet is missing or has no 'status' column, so failed SAEs cannot be listed."
            )
        )
        return sub
    bad = r[r.status != "ok"]
    if bad.empty:
        return sub.add(Para(f"All {len(r)} rows of results.parquet have status 'ok'."))
    cols = [
        c
        for c in (
            "unit_id",
            "sae_id",
            "status",
            "arch",
            "d_sae",
            "hook",
            "sparsity",
            "seed",
            "error",
        )
        if c in bad
    ]
    rows = [
        [_short(fmt_param(v) if c == "sparsity" else v) for c, v in zip(cols, row, strict=True)]
        for row in bad[cols].itertuples(index=False)
    ]
    return sub.add(
        Table(cols, rows, f"results.parquet rows with status != 'ok' ({len(bad)} of {len(r)})")
    )


def _provenance(store: RunView) -> Section:
    sub = Section("Provenance", "provenance")
    p = store.provenance
    if p is None:
        sub.add(Note(store.missing.get("provenance.json", "provenance.json is missing")))
    else:
        top = [[k, _short(v)] for k, v in p.items() if not isinstance(v, (dict, list))]
        sub.add(Table(["field", "value"], top or [["git_commit", "n/a"]], "provenance.json"))
        if "git_commit" not in p:
            sub.add(Note("provenance.json has no git_commit."))
        for key in ("packages", "machine"):
            val = p.get(key)
            if isinstance(val, dict):
                sub.add(Table([key, "value"], [[k, _short(v)] for k, v in val.items()], key))
            else:
                sub.add(Note(f"provenance.json has no '{key}' table."))
        if isinstance(p.get("study"), dict) and store.study_yaml is None:
            import yaml

            sub.add(
                Code(yaml.safe_dump(p["study"], sort_keys=False), "study config (provenance.json)")
            )
    if store.study_yaml is not None:
        sub.add(Code(store.study_yaml, "study.yaml"))
    model_cfg = store.root / "model" / "config.yaml"
    if model_cfg.is_file():
        sub.add(
            Code(model_cfg.read_text(), "model/config.yaml (the transformer's resolved config)")
        )
    return sub
