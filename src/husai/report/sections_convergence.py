"""Training convergence: did the SAEs reach their loss plateau, and if not, were they still moving?

How many SAEs met the trainer's loss-plateau test (results.parquet ``converged_step``),
whether that is at least :data:`PLATEAU_SHARE` of them, and per group (one sparsity of a
unit) how far it still moved over its last 20% of steps: the median relative change of its
SAEs' training loss (unit.json history) against the change the plateau test allows over
that span, the change of its cross-seed PW-MCC between decoder snapshots (dynamics.parquet)
against :data:`PWMCC_MOVING`, and the decoder rows' cosine between those snapshots
(snapshots.safetensors). Exact definitions: ``_TAIL_TEXT``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from husai.report.render import Block, Note, Para, Section, Table, fmt, fmt_param
from husai.report.store import RunView


def convergence_section(store: RunView) -> Section:
    """How many SAEs met the trainer's loss-plateau criterion, per group of configurations,
    and how far each group still moved over its last 20% of steps."""
    sub = Section("Training convergence", "convergence")
    r = store.results
    need = ("status", "arch", "d_sae", "hook", "checkpoint", "steps", "converged_step")
    if r is None or any(c not in getattr(r, "columns", []) for c in need):
        return sub.add(Note("results.parquet has no steps/converged_step columns."))
    ok = r[r.status == "ok"]
    if ok.empty:
        return sub.add(Note("no trained SAE in results.parquet"))
    rows, n_conv = [], 0
    for key, g in ok.groupby(["arch", "d_sae", "hook", "checkpoint"], sort=True):
        conv = g["converged_step"].dropna()
        n_conv += len(conv)
        med = fmt_param(float(conv.median())) if len(conv) else "-"
        rows.append([*key, len(g), int(g["steps"].max()), len(conv), med])
    cols = [
        "arch",
        "d_sae",
        "hook",
        "checkpoint",
        "SAEs",
        "steps run",
        "plateau reached",
        "median step",
    ]
    holds = n_conv >= PLATEAU_SHARE * len(ok)
    sub.add(
        Para(
            f"{n_conv} of {len(ok)} SAEs ({100 * n_conv / len(ok):.0f}%) met the trainer's "
            "loss-plateau criterion (sae_train.plateau_tol between consecutive plateau_window-step "
            "windows) and were frozen there; the others trained for the whole step budget, with "
            "the learning rate decaying to 0 at the end. The study's convergence criterion, at "
            f"least {PLATEAU_SHARE:.0%} of the SAEs at a plateau, "
            + ("holds." if holds else "does not hold.")
        ),
        Table(cols, rows, "results.parquet: steps and converged_step per group"),
    )
    if n_conv < len(ok):
        sub.add(
            Note(
                f"{len(ok) - n_conv} SAE(s) stopped at the step budget rather than at a loss plateau; "
                "their numbers describe SAEs trained for that budget."
            )
        )
    return sub.add(*_tail_blocks(store, ok))


TAIL_FROM = 0.8
"""The span examined: from 80% of an SAE's steps run to its last step (its last 20%)."""
PLATEAU_SHARE = 0.8
"""Training counts as converged when at least this share of the trained SAEs met the plateau."""
PWMCC_MOVING = 0.01
"""A group's cross-seed PW-MCC still moves when it changed by more than this over the span."""
GROUP = ["arch", "d_sae", "hook", "checkpoint", "sparsity"]
TAIL_COLUMNS = [
    *GROUP,
    "SAEs",
    "plateau reached",
    "loss change",
    "loss limit",
    "snapshots",
    "PW-MCC",
    "decoder cos",
    "still moving",
]


def _tail_blocks(store: RunView, ok: Any) -> list[Block]:
    """Per group (one sparsity of a unit): loss, PW-MCC and decoder movement over its last 20%."""
    if "sparsity" not in ok.columns or "sae_id" not in ok.columns or "unit_id" not in ok.columns:
        why = "results.parquet has no sparsity, sae_id or unit_id column"
        return [Note(f"{why}, so movement over the last 20% of steps is not shown.")]
    dyn, metric = _dynamics_metric(store)
    cos_cache: dict[str, Any] = {}
    rows, verdicts = [], []
    for key, g in ok.groupby(GROUP, sort=True):
        loss, limit = _group_loss(store, g)
        pw = _pwmcc_tail(dyn.get(key)) if dyn is not None else None
        cos = _median([_sae_cos(store, row, cos_cache) for row in g.itertuples(index=False)])
        moving = _moving(loss, limit, pw)
        n_plateau = int(g["converged_step"].notna().sum())
        verdicts.append((n_plateau < len(g), moving))
        rows.append(
            [*key[:4], _sparsity(g, key[4]), len(g), n_plateau, _pct(loss, "+"), _pct(limit, "")]
            + _pw_cells(pw)
            + [fmt(cos), moving]
        )
    label = "pw_mcc_alive" if metric is None else metric
    blocks: list[Block] = [
        Para(_TAIL_TEXT.format(tol=PWMCC_MOVING, metric=label)),
        Table(TAIL_COLUMNS, rows, "Movement over the last 20% of each SAE's steps, per group"),
        Para(_tail_summary(verdicts)),
    ]
    return blocks + _tail_notes(store, dyn, metric, rows)


_TAIL_TEXT = (
    "How far each group (one arch, width, hook, checkpoint and sparsity: its seeds) still moved "
    "over the last 20% of training. An SAE's last step is its plateau step if it reached one, "
    "else the step budget. 'loss change' is the median over the group's SAEs of "
    "(L_end - L_80) / |L_80|: L_end is the mean logged training loss (all loss terms summed, as "
    "the plateau test sums them; history in units/<unit>/unit.json) over the plateau_window "
    "steps ending at the last step, L_80 the same ending at 80% of it. 'loss limit' is the most "
    "a loss at a plateau can move over that span, plateau_tol x (0.2 x last step) / "
    "plateau_window (median over the SAEs): an improvement just under plateau_tol in every "
    "window. 'PW-MCC' is the group's cross-seed {metric} (dynamics.parquet) at the last decoder "
    "snapshot at or before 80% of the final snapshot's step and at the final snapshot, with the "
    "change; 'snapshots' gives those two steps (snapshots are log-spaced, so the first can be "
    "much earlier than 80%). 'decoder cos' is the median over the group's SAEs of the mean over "
    "latents (dead ones included) of the cosine between a latent's decoder row at those two "
    "snapshots (units/<unit>/snapshots.safetensors); 1 means the decoder did not move. A group "
    "is 'still moving' by 'loss' when |loss change| > loss limit and by 'PW-MCC' when "
    "|PW-MCC change| > {tol:g}; 'no' when neither holds for the measures that exist, 'n/a' when "
    "neither exists. Decoder cos is shown, not judged."
)


def _tail_summary(verdicts: list[tuple[bool, str]]) -> str:
    """One line on the groups in which some SAE did not reach the plateau."""
    open_ = [m for short, m in verdicts if short]
    if not open_:
        return f"In all {len(verdicts)} groups every SAE reached the loss plateau."
    moving = [m for m in open_ if m not in ("no", "n/a")]
    n_loss = sum("loss" in m for m in moving)
    n_pw = sum("PW-MCC" in m for m in moving)
    return (
        f"{len(open_)} of {len(verdicts)} groups have SAEs that did not reach the loss plateau. "
        f"Of these, {len(moving)} were still moving over their last 20% of steps ({n_loss} by "
        f"loss, {n_pw} by PW-MCC), {open_.count('no')} moved less than both limits, and "
        f"{open_.count('n/a')} could not be judged."
    )


def _tail_notes(store: RunView, dyn: Any, metric: str | None, rows: list[list]) -> list[Block]:
    notes = []
    loss_col, cos_col = TAIL_COLUMNS.index("loss change"), TAIL_COLUMNS.index("decoder cos")
    if all(row[loss_col] == "n/a" for row in rows):
        notes.append("no SAE has a usable loss history in units/<unit>/unit.json: loss change n/a.")
    if dyn is None:
        why = store.missing.get("dynamics.parquet", "dynamics.parquet has no PW-MCC rows")
        notes.append(f"PW-MCC change is n/a: {why}.")
    elif metric != "pw_mcc_alive":
        notes.append(
            "dynamics.parquet has no pw_mcc_alive rows, so the PW-MCC column is pw_mcc over all "
            "latents, dead ones included."
        )
    if all(row[cos_col] == "n/a" for row in rows):
        notes.append("no unit has two decoder snapshots in units/<unit>/: decoder cos n/a.")
    return [Note(n) for n in notes]


def _group_loss(store: RunView, g: Any) -> tuple[float, float]:
    """Median relative loss change of the group's SAEs over their last 20%, and median limit."""
    pairs = []
    for row in g.itertuples(index=False):
        rec = store.unit_record(str(row.unit_id))
        plateau = isinstance(row.converged_step, numbers.Real) and row.converged_step >= 0
        last = row.converged_step if plateau else row.steps
        pairs.append(loss_tail(rec, str(row.sae_id), float(last)) if rec else (math.nan,) * 2)
    return _median([p[0] for p in pairs]), _median([p[1] for p in pairs])


def loss_tail(record: dict[str, Any], sae_id: str, last: float) -> tuple[float, float]:
    """(relative change, limit) of one SAE's training loss from step 0.8*last to ``last``.

    Each end is the mean logged loss over the ``plateau_window`` steps ending there (at least
    the last entry logged by then); the limit is ``plateau_tol * 0.2 * last / plateau_window``,
    NaN when the unit has no plateau test (plateau_tol 0). NaN change when not measurable."""
    try:
        idx = [s.get("sae_id") for s in record["saes"]].index(sae_id)
        steps_T = np.asarray(record["history"]["step"], dtype=float)
        loss_T = np.asarray([v[idx] for v in record["history"]["loss"]], dtype=float)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return math.nan, math.nan
    train = (record.get("unit") or {}).get("sae_train") or {}
    tol, window = float(train.get("plateau_tol") or 0), float(train.get("plateau_window") or 0)
    start = TAIL_FROM * last
    (l0, s0), (l1, s1) = (_window_mean(steps_T, loss_T, t, window) for t in (start, last))
    change = (l1 - l0) / abs(l0) if s0 < s1 and l0 != 0 else math.nan
    limit = tol * (last - start) / window if tol > 0 and window > 0 else math.nan
    return change, limit


def _window_mean(steps_T: np.ndarray, loss_T: np.ndarray, end: float, window: float) -> tuple:
    """Mean loss logged in (end - window, end] (else the last entry by ``end``), its last step."""
    upto = steps_T <= end
    if len(steps_T) != len(loss_T) or not upto.any():
        return math.nan, math.inf
    sel = upto & (steps_T > end - window)
    if not sel.any():
        sel = steps_T == steps_T[upto].max()
    return float(loss_T[sel].mean()), float(steps_T[sel].max())


def _dynamics_metric(store: RunView) -> tuple[dict | None, str | None]:
    """dynamics.parquet rows per group for pw_mcc_alive (else pw_mcc), and that metric."""
    d = store.dynamics
    if d is None or not {*GROUP, "step", "metric", "value"} <= set(getattr(d, "columns", [])):
        return None, None
    metric = next((m for m in ("pw_mcc_alive", "pw_mcc") if (d.metric == m).any()), None)
    if metric is None:
        return None, None
    return dict(tuple(d[d.metric == metric].groupby(GROUP, sort=True))), metric


def _pwmcc_tail(g: Any) -> tuple[int, int, float, float] | None:
    """(step at or before 80% of the final snapshot, final step, value there, value at the end)."""
    if g is None or g.empty:
        return None
    by_step = g.groupby("step")["value"].mean()
    end = int(by_step.index.max())
    before = by_step.index[by_step.index <= TAIL_FROM * end]
    if not len(before):
        return None
    ref = int(before.max())
    return ref, end, float(by_step[ref]), float(by_step[end])


def _sae_cos(store: RunView, row: Any, cache: dict[str, Any]) -> float:
    """Mean over latents of the cosine of one SAE's decoder rows at the 80% and final snapshots."""
    uid = str(row.unit_id)
    if uid not in cache:
        cache[uid] = _unit_cos(store, uid)
    rec = store.unit_record(uid)
    ids = [s.get("sae_id") for s in rec.get("saes", [])] if rec else []
    cos_N = cache[uid]
    if cos_N is None or row.sae_id not in ids or ids.index(row.sae_id) >= len(cos_N):
        return math.nan
    return float(cos_N[ids.index(row.sae_id)])


def _unit_cos(store: RunView, unit_id: str) -> np.ndarray | None:
    steps = store.snapshot_steps(unit_id)
    before = [s for s in steps if s <= TAIL_FROM * steps[-1]] if steps else []
    if not before or before[-1] == steps[-1]:
        return None
    a_NSD, b_NSD = store.snapshot(unit_id, before[-1]), store.snapshot(unit_id, steps[-1])
    if a_NSD is None or b_NSD is None or a_NSD.shape != b_NSD.shape:
        return None
    norms_NS = np.linalg.norm(a_NSD, axis=-1) * np.linalg.norm(b_NSD, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_NS = (a_NSD * b_NSD).sum(-1) / norms_NS
    return np.nanmean(np.where(norms_NS > 0, cos_NS, np.nan), axis=-1)


def _moving(loss: float, limit: float, pw: tuple | None) -> str:
    """'loss', 'PW-MCC', both, 'no', or 'n/a' (the thresholds: see ``_TAIL_TEXT``)."""
    loss_known = math.isfinite(loss) and math.isfinite(limit)
    pw_delta = pw[3] - pw[2] if pw is not None else math.nan
    why = [
        name
        for name, hit in (
            ("loss", loss_known and abs(loss) > limit),
            ("PW-MCC", math.isfinite(pw_delta) and abs(pw_delta) > PWMCC_MOVING),
        )
        if hit
    ]
    if why:
        return ", ".join(why)
    return "no" if loss_known or math.isfinite(pw_delta) else "n/a"


def _pw_cells(pw: tuple | None) -> list[str]:
    if pw is None:
        return ["n/a", "n/a"]
    ref, end, v0, v1 = pw
    return [f"{ref} -> {end}", f"{fmt(v0)} -> {fmt(v1)} ({v1 - v0:+.3f})"]


def _sparsity(g: Any, value: Any) -> str:
    names = g["sparsity_name"].dropna().unique()
    return f"{names[0]}={fmt_param(value)}" if len(names) == 1 else fmt_param(value)


def _pct(x: float, sign: str) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:{sign}.2f}%"


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan
