"""Run one unit: batched SAE training, evaluation, stability and ground-truth metrics.

``execute_unit`` is a pure function of its payload: it reads nothing from and writes
nothing to the run store, so the same call runs in-process or as a Ray task on another
machine; the driver writes what it returns. A failure (e.g. a NaN loss) is returned as
a failed result carrying its error, so the study goes on.

Besides the pair and dynamics rows, every SAE directory gets ``latents.parquet``, one row
per latent (:mod:`husai.experiments.latents`), listed with its sha256 in ``unit.json`` like
the SAE's other files.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from husai.config import StudyMetricsConfig
from husai.experiments.grid import Unit
from husai.experiments.latents import (
    LATENTS_FILE,
    cross_seed_columns,
    latent_columns,
    latent_frame,
    total_sum_of_squares,
)
from husai.metrics import ground_truth_summary, pw_mcc, random_unit_baseline, stability_pair
from husai.metrics.baselines import hardest
from husai.metrics.data_baselines import (
    DataReference,
    data_baselines,
    data_reference,
    plane_coverage_baselines,
    weighted_mean,
)
from husai.model import build_model
from husai.model.splice import loss_with_replacement
from husai.saes import evaluate, init_group, load_sae, train_group
from husai.saes.io import save_member
from husai.saes.trainer import GroupResult
from husai.schema import DynamicsRow, GroupKey, PairRow, SaeRecord, group_id

log = logging.getLogger(__name__)


@dataclass
class UnitPayload:
    """Everything a unit needs, shippable to a Ray worker (no paths into the run store)."""

    unit: Unit
    unit_id: str
    acts_ND: Tensor
    metrics: StudyMetricsConfig
    planes: Any | None = None
    modulus: int | None = None
    model_cfg: Any | None = None
    model_state: dict[str, Tensor] | None = None
    tokens: Tensor | None = None
    labels: Tensor | None = None
    device: str = "cpu"
    """Where the SAEs train (``cpu`` or ``cuda``); the measurements run on the CPU."""


@dataclass
class UnitResult:
    unit_id: str
    status: str
    error: str | None = None
    saes: list[SaeRecord] = field(default_factory=list)
    snapshots: dict[str, Tensor] = field(default_factory=dict)
    pairs: list[PairRow] = field(default_factory=list)
    dynamics: list[DynamicsRow] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    wall_s: float = 0.0


def execute_unit(payload: UnitPayload) -> UnitResult:
    """Train, evaluate and measure one unit; never raises for a training failure."""
    _maybe_crash_for_test(payload.unit_id)
    start = time.perf_counter()
    try:
        result = _execute(payload)
    except Exception as err:  # recorded, not swallowed: the study lists it as failed
        log.warning("unit %s failed: %s", payload.unit_id, err)
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        return UnitResult(payload.unit_id, "failed", error=last, wall_s=time.perf_counter() - start)
    result.wall_s = time.perf_counter() - start
    return result


def _execute(payload: UnitPayload) -> UnitResult:
    unit, acts_ND = payload.unit, payload.acts_ND
    t0 = time.perf_counter()
    group = train_group(acts_ND, list(unit.sae_cfgs), unit.sae_train, device=payload.device)
    train_s = time.perf_counter() - t0
    init_sae = init_group(acts_ND.shape[1], list(unit.sae_cfgs), unit.sae_train)
    model, loss_cache = _load_model(payload), {}
    data = data_reference(acts_ND)
    coverage = _CoverageWeights.of(payload, data)
    saes, codes, alive, latents, latents_s = [], {}, {}, [], 0.0
    sst = total_sum_of_squares(acts_ND)  # once per unit: every SAE's EV contributions use it
    for idx, (cfg, seed) in enumerate(group.members):
        record, codes[idx], alive[idx], single = _measure_sae(
            payload, group, idx, (cfg, seed), model, loss_cache
        )
        record.gt.update(coverage.columns(record.gt))
        saes.append(record)
        t1 = time.perf_counter()
        latents.append(
            (
                single.W_dec,
                latent_columns(single, acts_ND, codes[idx], alive[idx], payload.planes, sst),
            )
        )
        latents_s += time.perf_counter() - t1
    t1 = time.perf_counter()
    _add_latent_files(payload, saes, latents)
    latents_s += time.perf_counter() - t1
    pairs = _pair_rows(unit, payload, group.sae, init_sae, codes, alive, data)
    dynamics = _dynamics_rows(unit, payload, group, data)
    snapshots = {f"step_{s}": w for s, w in sorted(group.snapshots.items())}
    return UnitResult(
        payload.unit_id,
        "ok",
        saes=saes,
        snapshots=snapshots,
        pairs=pairs,
        dynamics=dynamics,
        history={
            **_plain(group.history),
            "train_s": train_s,
            "measure_s": time.perf_counter() - t0 - train_s,
            "latents_s": latents_s,
        },
        steps=int(group.steps),
    )


def _measure_sae(
    payload: UnitPayload,
    group: Any,
    idx: int,
    member: tuple[Any, int],
    model: Any,
    loss_cache: dict,
) -> tuple[SaeRecord, Tensor, Tensor, Any]:
    """Evaluation, loss recovered and ground truth for model ``idx``; its files as bytes.

    Returns the record, its codes on all rows, its alive mask and the SAE as saved. The
    SAE's id is its folder's name from :func:`husai.saes.io.save_member`, as train-saes'."""
    unit, (cfg, seed) = payload.unit, member
    sparsity = float(getattr(cfg, unit.sparsity_name))
    model_cfg = payload.model_cfg
    with tempfile.TemporaryDirectory() as tmp:
        sae_dir = save_member(
            tmp,
            group,
            idx,
            hook_name=unit.hook,
            model_name=model_cfg.name if model_cfg is not None else None,
            context_size=model_cfg.task.n_ctx if model_cfg is not None else None,
            extra={"checkpoint": unit.checkpoint},
        )
        sae_id, single = sae_dir.name, load_sae(sae_dir)
        files = {p.name: p.read_bytes() for p in sorted(sae_dir.iterdir()) if p.is_file()}
    ev = evaluate(single, payload.acts_ND)
    alive_S = ev.pop("alive_mask")
    with torch.no_grad():
        codes_NS = single.encode(payload.acts_ND)
    if model is not None:
        ev.update(_loss_recovered(model, payload, single, loss_cache))
    record = SaeRecord(
        sae_id,
        _group_key(payload, sparsity),
        seed=int(seed),
        steps=int(group.steps),
        converged_step=group.converged_step[idx],
        n_alive=int(alive_S.sum()),
        eval=_plain(ev),
        gt=_ground_truth(payload, single, codes_NS),
        files=files,
    )
    return record, codes_NS, alive_S, single


def _load_model(payload: UnitPayload) -> Any:
    if (
        payload.model_state is None
        or payload.model_cfg is None
        or not payload.metrics.loss_recovered
    ):
        return None
    model = build_model(payload.model_cfg.task, payload.model_cfg.model)
    model.load_state_dict(payload.model_state)
    return model.eval()


def _loss_recovered(
    model: Any, payload: UnitPayload, sae: Any, cache: dict[str, Any]
) -> dict[str, float]:
    """Loss with the SAE spliced in; clean and ablated losses are computed once per unit."""
    with torch.no_grad():
        out = loss_with_replacement(
            model,
            payload.tokens,
            payload.labels,
            payload.unit.hook,
            lambda x: sae.decode(sae.encode(x)),
            reference=cache.get("reference"),
        )
    cache["reference"] = out
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


def _ground_truth(payload: UnitPayload, sae: Any, codes_NS: Tensor) -> dict[str, Any]:
    if payload.planes is None:
        return {}
    return _plain(ground_truth_summary(sae.W_dec, payload.planes, codes_NS, payload.modulus))


@dataclass
class _CoverageWeights:
    """Variance-weighted plane coverage: key planes weighted by their R^2 (variance share).

    The plain ``plane_coverage_mean`` averages key planes equally although most carry
    under 1% of the variance; ``plane_coverage_weighted`` is ``sum_p r2_p cov_p / sum_p
    r2_p`` over the same planes, with its unit-sphere and principal-subspace baselines
    (one Monte Carlo per unit: every SAE of a unit has the same width and planes).
    """

    weights_P: Tensor | None
    baselines: dict[str, float]

    @classmethod
    def of(cls, payload: UnitPayload, data: DataReference) -> _CoverageWeights:
        planes = payload.planes
        r2 = getattr(planes, "r2", None)
        if planes is None or r2 is None:
            return cls(None, {})
        is_key = getattr(planes, "is_key", None)
        keep = torch.as_tensor(is_key).bool() if is_key is not None else None
        weights = torch.as_tensor(r2)[keep] if keep is not None and bool(keep.any()) else r2
        base = plane_coverage_baselines(
            planes.key_only(), payload.unit.d_sae, weights, data, payload.metrics.baseline_trials
        )
        return cls(torch.as_tensor(weights), base)

    def columns(self, gt: dict[str, Any]) -> dict[str, float]:
        per_plane = gt.get("plane_coverage_per_plane")
        if self.weights_P is None or per_plane is None:
            return {}
        return {"plane_coverage_weighted": weighted_mean(per_plane, self.weights_P)} | (
            self.baselines
        )


def _pair_rows(
    unit: Unit,
    payload: UnitPayload,
    sae: Any,
    init_sae: Any,
    codes: dict,
    alive: dict,
    data: DataReference,
) -> list[PairRow]:
    """One row per (sparsity, seed pair, metric), with its random and init baselines.

    ``baseline`` is the unit-sphere baseline; ``baseline_subspace`` and ``baseline_acts``
    the data-aware ones (NaN where a metric has none); ``baseline_hardest`` the largest.
    """
    seeds = unit.sae_train.init_seeds
    rows = []
    for s_idx, cfg in enumerate(unit.sae_cfgs):
        sparsity = float(getattr(cfg, unit.sparsity_name))
        for i, j in combinations(range(len(seeds)), 2):
            a, b = s_idx * len(seeds) + i, s_idx * len(seeds) + j
            vals = stability_pair(
                sae.W_dec[a],
                sae.W_dec[b],
                enc_a=sae.W_enc[a].T,
                enc_b=sae.W_enc[b].T,
                codes_a=codes[a],
                codes_b=codes[b],
                alive_a=alive[a],
                alive_b=alive[b],
                init_a=_init_view(init_sae, a),
                init_b=_init_view(init_sae, b),
                tau=payload.metrics.shared_tau,
                trials=payload.metrics.baseline_trials,
                data=data,
            )
            key = _group_key(payload, sparsity)
            rows += [PairRow.of(key, seeds[i], seeds[j], name, mv) for name, mv in vals.items()]
    return rows


def _init_view(init_sae: Any, index: int) -> SimpleNamespace:
    """Model ``index`` of the untrained group, as the metrics' SAE-like object."""
    return SimpleNamespace(
        W_dec=init_sae.W_dec[index].detach(), W_enc=init_sae.W_enc[index].detach()
    )


def _dynamics_rows(
    unit: Unit, payload: UnitPayload, group: GroupResult, data: DataReference
) -> list[DynamicsRow]:
    """Cross-seed PW-MCC at every decoder snapshot, over all latents (``pw_mcc``) and over the
    latents alive at that step (``pw_mcc_alive``: fired within the last ``dead_window``
    training samples, ``GroupResult.snapshot_alive``), each beside its random baselines. The
    alive rows' baselines are drawn at the seeds' mean alive count (one draw per snapshot and
    configuration, not one per pair as in results.parquet)."""
    seeds = unit.sae_train.init_seeds
    n_seeds, trials = len(seeds), payload.metrics.baseline_trials
    rows = []
    for step, dec_NSD in sorted(group.snapshots.items()):
        alive_NS = group.snapshot_alive.get(step)
        for s_idx, cfg in enumerate(unit.sae_cfgs):
            members = range(s_idx * n_seeds, (s_idx + 1) * n_seeds)
            pairs = list(combinations(members, 2))
            if not pairs:
                continue
            key = _group_key(payload, float(getattr(cfg, unit.sparsity_name)))
            d = dec_NSD.shape[2]
            vals = [pw_mcc(dec_NSD[i], dec_NSD[j]) for i, j in pairs]
            rows.append(_dynamics_row(key, step, "pw_mcc", vals, dec_NSD.shape[1], d, data, trials))
            if alive_NS is None:
                continue  # a checkpoint of an older version: no alive masks at its snapshots
            subs = {m: dec_NSD[m][alive_NS[m]] for m in members}
            vals = [
                pw_mcc(subs[i], subs[j]) if min(len(subs[i]), len(subs[j])) else 0.0
                for i, j in pairs
            ]
            n_alive = round(sum(len(v) for v in subs.values()) / n_seeds)
            rows.append(_dynamics_row(key, step, "pw_mcc_alive", vals, n_alive, d, data, trials))
    return rows


def _dynamics_row(
    key: GroupKey,
    step: int,
    metric: str,
    vals: list[float],
    n: int,
    d: int,
    data: DataReference,
    trials: int,
) -> DynamicsRow:
    """One snapshot's mean over pairs beside the baselines of n-latent random dictionaries
    (0 for an empty dictionary, which random ones match no better)."""
    base, extra = 0.0, {"subspace": 0.0, "acts": 0.0}
    if n > 0:
        base, _ = random_unit_baseline("pw_mcc", n, n, d, trials=trials)
        extra = data_baselines("pw_mcc", n, n, data, trials)
    return DynamicsRow(
        key,
        step=int(step),
        metric=metric,
        value=float(sum(vals) / len(vals)),
        baseline=float(base),
        baseline_subspace=extra["subspace"],
        baseline_acts=extra["acts"],
        baseline_hardest=hardest(base, *extra.values()),
    )


def _add_latent_files(
    payload: UnitPayload, saes: list[SaeRecord], latents: list[tuple[Tensor, dict]]
) -> None:
    """Add ``latents.parquet`` to every SAE's files; stability is per configuration, so
    the seeds of each sparsity value (config-major order, as in ``group.members``) go together."""
    n_seeds, tau = len(payload.unit.sae_train.init_seeds), payload.metrics.shared_tau
    for start in range(0, len(saes), n_seeds):
        members = range(start, start + n_seeds)
        cross = cross_seed_columns([latents[m][0] for m in members], tau)
        for m, extra in zip(members, cross, strict=True):
            rec = saes[m]
            head = {"sae_id": rec.sae_id, "seed": rec.seed, **rec.group.columns()}
            head |= {"unit_id": payload.unit_id, "d_in": int(payload.acts_ND.shape[1])}
            head |= {"n_others": n_seeds - 1, "tau": float(tau)}
            buf = io.BytesIO()
            latent_frame(head, latents[m][1] | extra).to_parquet(buf, index=False)
            rec.files[LATENTS_FILE] = buf.getvalue()


def _group_key(payload: UnitPayload, sparsity: float) -> GroupKey:
    """The configuration of one sparsity value of the payload's unit."""
    unit = payload.unit
    return GroupKey(
        group_id(payload.unit_id, sparsity),
        unit.arch,
        unit.d_sae,
        unit.hook,
        unit.checkpoint,
        unit.sparsity_name,
        sparsity,
    )


def _plain(obj: Any) -> Any:
    """JSON-safe copy: tensors and numpy scalars become lists and floats."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist()
    if hasattr(obj, "item") and not isinstance(obj, (int, float, bool, str)):
        return obj.item()
    return obj


def _maybe_crash_for_test(unit_id: str) -> None:
    """Fault injection for the Ray retry test: HUSAI_FAULT_DIR makes each unit's first attempt die."""
    fault_dir = os.environ.get("HUSAI_FAULT_DIR")
    if not fault_dir:
        return
    marker = Path(fault_dir) / unit_id.replace("/", "_")
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("crashed once\n")
        os._exit(1)
