"""Cross-seed stability of SAE features, for a pair of SAEs and for a set of seeds.

Metrics (a, b: decoder directions ``[n, d]``; all cosines treat zero rows as 0):

- ``pw_mcc``: Song et al. 2025 (arXiv 2505.20254, Sec. 3, "PW-MCC"; their released
  ``MCC`` in ``synthetic/utils.py`` and ``examples/dictionary_learning/utils.py``):
  rows normalised, signed cosine, Hungarian matching maximising the summed cosine over
  *all* latents, mean over the ``min(n_a, n_b)`` matched pairs. The literature number.
- ``pw_mcc_alive`` / ``mmcs_alive``: the same over latents that fired on the evaluation
  inputs only; ``n_latents`` states how many, and the baseline uses those counts.
- ``mmcs``: mean max |cosine| in both directions, averaged (Sharkey et al. 2022;
  what the earlier HUSAI study called PWMCC): 0.5 (mean_i max_j |c_ij| + mean_j max_i |c_ij|).
- ``shared_fraction``: share of Hungarian-matched decoder pairs whose decoder *and*
  encoder cosines are both >= tau (Paulo & Belrose 2025, arXiv 2501.16615, Sec. 3);
  decoder only when no encoders are given (stated in ``note``).
- ``activation_mcc``: Hungarian matching on |Pearson correlation| of latent activations
  over the same inputs, mean over matched pairs (MCC as in ICA, Khemakhem et al. 2020);
  zero-variance latents correlate 0.
- ``pw_mcc_encoder``: PW-MCC on encoder directions, when encoders are given.
- ``subspace_overlap`` (top-r principal subspaces) and ``span_overlap``: see
  :mod:`husai.metrics.subspace`.
- ``per_latent_stability``: for each latent of a reference SAE, its matched cosine in
  every other seed; a per-latent score to filter latents by.

``stability_pair`` returns every metric as a :class:`MetricValue` with its random-unit
baseline (activation MCC: a permutation baseline) and, if init decoders are given, the
init baseline. Given the activations' :class:`~husai.metrics.data_baselines.DataReference`
(``data=``), decoder metrics also get the data-aware baselines (random directions in the
activations' principal subspace; random centred activation rows), which low-rank
activations make far harder than the unit sphere; ``MetricValue.baseline_hardest`` is
the largest. Encoder-based metrics (``pw_mcc_encoder``, ``shared_fraction`` with
encoders) keep the unit-sphere baseline only: encoder directions need not lie in the
activations' span. ``stability_set`` averages pairs with a bootstrap CI over pairs.
"""

from __future__ import annotations

import logging
from itertools import combinations
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from husai.metrics.baselines import (
    MetricSpec,
    MetricValue,
    metric_value,
    monte_carlo,
    random_unit_baseline_many,
)
from husai.metrics.bootstrap import seed_bootstrap_ci
from husai.metrics.data_baselines import DataReference, data_baselines_many
from husai.metrics.inputs import alive_from_codes, as_decoder, as_encoder, as_mask
from husai.metrics.matching import match
from husai.metrics.similarity import (
    activation_mcc,
    mmcs,
    pw_mcc,
    shared_fraction,
)
from husai.metrics.subspace import (
    cached_row_basis,
    default_ranks,
    span_overlap_of_bases,
    subspace_overlap_of_bases,
)

log = logging.getLogger(__name__)


def per_latent_stability(ref: Any, others: list[Any], *, signed: bool = True) -> np.ndarray:
    """[n_ref, len(others)]: each reference latent's matched cosine in every other SAE.

    Reference latents left unmatched (the other SAE is narrower) score 0.
    """
    dec_ref = as_decoder(ref)
    cols = [match(dec_ref, as_decoder(o), signed=signed).per_a(0.0) for o in others]
    return np.stack(cols, axis=1) if cols else np.zeros((dec_ref.shape[0], 0))


def _init_value(fn: Any, init_a: Any, init_b: Any) -> float | None:
    if init_a is None or init_b is None:
        return None
    return float(fn(as_decoder(init_a), as_decoder(init_b)))


def stability_pair(
    a: Any,
    b: Any,
    *,
    codes_a: Tensor | None = None,
    codes_b: Tensor | None = None,
    alive_a: Tensor | None = None,
    alive_b: Tensor | None = None,
    enc_a: Tensor | None = None,
    enc_b: Tensor | None = None,
    init_a: Any = None,
    init_b: Any = None,
    baselines: bool = True,
    tau: float = 0.7,
    ranks: list[int] | None = None,
    trials: int | None = None,
    seed: int = 0,
    data: DataReference | None = None,
) -> dict[str, MetricValue]:
    """Every stability metric of one SAE pair, each with its baselines.

    ``a``/``b``: decoders ``[n, d]``, SAE objects or SAE directories. ``alive_*`` default
    to latents with a non-zero code in ``codes_*``; without codes or masks the alive-only
    and activation metrics are omitted. ``init_*``: the same SAEs at initialisation
    (decoders, or SAE objects to include encoders) for the init baseline. ``data``: the
    activations' reference for the data-aware baselines (module docstring).
    """
    dec_a, dec_b = as_decoder(a), as_decoder(b)
    enc_a = as_decoder(enc_a) if enc_a is not None else as_encoder(a)
    enc_b = as_decoder(enc_b) if enc_b is not None else as_encoder(b)
    d = dec_a.shape[1]
    n = (dec_a.shape[0], dec_b.shape[0])
    if data is not None and data.d != d:
        raise ValueError(f"data: activations have d={data.d}, decoders d={d}")
    ctx = _Ctx(baselines, trials, seed, d, data)
    out: dict[str, MetricValue] = {}
    out["pw_mcc"] = ctx.value(
        "pw_mcc", pw_mcc(dec_a, dec_b), n, _init_value(pw_mcc, init_a, init_b)
    )
    out["mmcs"] = ctx.value("mmcs", mmcs(dec_a, dec_b), n, _init_value(mmcs, init_a, init_b))
    out["shared_fraction"] = _shared(ctx, dec_a, dec_b, enc_a, enc_b, init_a, init_b, tau)
    if enc_a is not None and enc_b is not None:
        out["pw_mcc_encoder"] = _encoder_pw_mcc(ctx, enc_a, enc_b, init_a, init_b)
    alive = _alive_masks(dec_a, dec_b, codes_a, codes_b, alive_a, alive_b)
    if alive is not None:
        out["pw_mcc_alive"] = _alive_only(ctx, "pw_mcc", dec_a, dec_b, *alive)
        out["mmcs_alive"] = _alive_only(ctx, "mmcs", dec_a, dec_b, *alive)
    if codes_a is not None and codes_b is not None:
        out["activation_mcc"] = _activation(ctx, codes_a, codes_b)
    out.update(_subspaces(ctx, dec_a, dec_b, init_a, init_b, ranks))
    return out


class _Base(NamedTuple):
    """The random baselines of one metric: unit sphere (mean, std) and data-aware means."""

    mean: float | None = None
    std: float | None = None
    data: dict[str, float] | None = None


class _Ctx:
    """Shared baseline settings of one ``stability_pair`` call."""

    def __init__(
        self, baselines: bool, trials: int | None, seed: int, d: int, data: DataReference | None
    ) -> None:
        self.baselines, self.trials, self.seed, self.d = baselines, trials, seed, d
        self.data = data

    def base(
        self, specs: list[MetricSpec], n: tuple[int, int], data_ok: bool = True
    ) -> list[_Base]:
        """The baselines of every spec; specs asked together share their random draws."""
        if not self.baselines:
            return [_Base() for _ in specs]
        unit = random_unit_baseline_many(specs, n[0], n[1], self.d, self.trials, self.seed)
        ref = self.data if data_ok else None
        data = data_baselines_many(specs, n[0], n[1], ref, self.trials, self.seed)
        return [_Base(mean, std, dd) for (mean, std), dd in zip(unit, data, strict=True)]

    def value(
        self,
        name: str,
        value: float,
        n: tuple[int, int],
        init: float | None,
        *,
        base_metric: str | None = None,
        dead_included: bool = True,
        note: str = "",
        data_ok: bool = True,
        base: _Base | None = None,
        **params: Any,
    ) -> MetricValue:
        """``value`` as a MetricValue; ``base`` (else computed from the metric and params)."""
        if base is None:
            base = self.base([(base_metric or name, params)], n, data_ok)[0]
        data = base.data or {}
        return metric_value(
            name,
            value,
            base.mean,
            baseline_std=base.std,
            baseline_init=init,
            n_latents=n,
            dead_included=dead_included,
            note=note,
            baseline_subspace=data.get("subspace"),
            baseline_acts=data.get("acts"),
        )


def _shared(ctx: _Ctx, dec_a, dec_b, enc_a, enc_b, init_a, init_b, tau: float) -> MetricValue:
    use_enc = enc_a is not None and enc_b is not None
    value = shared_fraction(
        dec_a, dec_b, enc_a if use_enc else None, enc_b if use_enc else None, tau=tau
    )
    init = None
    if init_a is not None and init_b is not None:
        ie_a, ie_b = as_encoder(init_a), as_encoder(init_b)
        init = shared_fraction(
            init_a, init_b, ie_a if use_enc else None, ie_b if use_enc else None, tau=tau
        )
    note = f"tau={tau}; " + (
        "decoder and encoder" if use_enc else "decoder only (no encoders given)"
    )
    base_metric = "shared_fraction" if use_enc else "shared_fraction_dec"
    n = (dec_a.shape[0], dec_b.shape[0])
    return ctx.value(
        "shared_fraction",
        value,
        n,
        init,
        base_metric=base_metric,
        note=note,
        data_ok=not use_enc,
        tau=tau,
    )


def _encoder_pw_mcc(
    ctx: _Ctx, enc_a: Tensor, enc_b: Tensor, init_a: Any, init_b: Any
) -> MetricValue:
    """PW-MCC on encoder directions (rows of W_enc^T), Hungarian as for decoders."""
    init = None
    if init_a is not None and init_b is not None:
        ie_a, ie_b = as_encoder(init_a), as_encoder(init_b)
        init = pw_mcc(ie_a, ie_b) if ie_a is not None and ie_b is not None else None
    n = (enc_a.shape[0], enc_b.shape[0])
    return ctx.value(
        "pw_mcc_encoder",
        pw_mcc(enc_a, enc_b),
        n,
        init,
        base_metric="pw_mcc",
        note="encoder directions; signed cosine, Hungarian, all latents",
        data_ok=False,
    )


def _alive_masks(dec_a, dec_b, codes_a, codes_b, alive_a, alive_b) -> tuple[Tensor, Tensor] | None:
    if alive_a is None and codes_a is not None:
        alive_a = alive_from_codes(codes_a)
    if alive_b is None and codes_b is not None:
        alive_b = alive_from_codes(codes_b)
    if alive_a is None or alive_b is None:
        return None
    return as_mask(alive_a, dec_a.shape[0], "alive_a"), as_mask(alive_b, dec_b.shape[0], "alive_b")


def _alive_only(
    ctx: _Ctx, name: str, dec_a: Tensor, dec_b: Tensor, alive_a: Tensor, alive_b: Tensor
) -> MetricValue:
    """``name`` in {'pw_mcc', 'mmcs'} over alive latents, against alive-count baselines."""
    sub_a, sub_b = dec_a[alive_a], dec_b[alive_b]
    n = (sub_a.shape[0], sub_b.shape[0])
    note = f"alive latents only: {n[0]}/{dec_a.shape[0]} and {n[1]}/{dec_b.shape[0]}"
    if min(n) == 0:  # nothing to match: every dictionary, random or not, scores 0
        zero = 0.0 if ctx.data is not None else None
        return metric_value(
            f"{name}_alive",
            0.0,
            0.0,
            n_latents=n,
            dead_included=False,
            note=note,
            baseline_subspace=zero,
            baseline_acts=zero,
        )
    value = (pw_mcc if name == "pw_mcc" else mmcs)(sub_a, sub_b)
    return ctx.value(
        f"{name}_alive", value, n, None, base_metric=name, dead_included=False, note=note
    )


def _activation(ctx: _Ctx, codes_a: Tensor, codes_b: Tensor) -> MetricValue:
    codes_a, codes_b = torch.as_tensor(codes_a), torch.as_tensor(codes_b)
    value = activation_mcc(codes_a, codes_b)
    base = std = None
    if ctx.baselines:
        n_inputs = codes_b.shape[0]

        def one(gen: torch.Generator) -> float:
            return activation_mcc(codes_a, codes_b[torch.randperm(n_inputs, generator=gen)])

        base, std = monte_carlo(one, min(ctx.trials or 3, 3), ctx.seed)
    return metric_value(
        "activation_mcc",
        value,
        base,
        baseline_std=std,
        baseline_kind="permuted",
        n_latents=(codes_a.shape[1], codes_b.shape[1]),
        note="|Pearson| of activations; baseline: B's codes shuffled across inputs",
    )


def _subspaces(
    ctx: _Ctx, dec_a, dec_b, init_a, init_b, ranks: list[int] | None
) -> dict[str, MetricValue]:
    """Subspace overlap at every rank and span overlap: one SVD per decoder, shared draws."""
    n = (dec_a.shape[0], dec_b.shape[0])
    ranks = default_ranks(ctx.d, *n) if ranks is None else ranks
    q = cached_row_basis(dec_a), cached_row_basis(dec_b)
    q_init = None
    if init_a is not None and init_b is not None:
        q_init = cached_row_basis(as_decoder(init_a)), cached_row_basis(as_decoder(init_b))
    specs: list[MetricSpec] = [("subspace_overlap", {"r": r}) for r in ranks]
    *bases, span_base = ctx.base([*specs, ("span_overlap", {})], n)
    out = {}
    for r, base in zip(ranks, bases, strict=True):
        init = None if q_init is None else subspace_overlap_of_bases(*q_init, r)
        value = subspace_overlap_of_bases(*q, r)
        note = f"top-{r} principal subspaces"
        mv = ctx.value(f"subspace_overlap_r{r}", value, n, init, note=note, base=base)
        out[mv.name] = mv
    if ranks:
        r0 = 16 if 16 in ranks else ranks[0]
        main = out[f"subspace_overlap_r{r0}"]
        out["subspace_overlap"] = MetricValue(**{**main.__dict__, "name": "subspace_overlap"})
    out["span_overlap"] = ctx.value(
        "span_overlap",
        span_overlap_of_bases(*q),
        n,
        None if q_init is None else span_overlap_of_bases(*q_init),
        note="mean cos^2 of principal angles between decoder spans (1 if both span R^d)",
        base=span_base,
    )
    return out


def stability_set(
    saes: list[Any],
    *,
    codes: list[Tensor] | None = None,
    alive: list[Tensor] | None = None,
    encs: list[Tensor] | None = None,
    inits: list[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    **pair_kwargs: Any,
) -> dict[str, MetricValue]:
    """Every metric averaged over all seed pairs, with a percentile bootstrap CI that
    resamples seeds (:mod:`husai.metrics.bootstrap`; NaN-free only from 3 seeds on).

    The value, baseline and init baseline are means over pairs. ``extra['pairs']`` lists the per-pair values; ``extra['per_latent']``
    the per-latent stability of the first SAE against the others.
    """
    if len(saes) < 2:
        raise ValueError(f"stability_set needs at least 2 SAEs, got {len(saes)}")
    per_pair: dict[str, list[MetricValue]] = {}
    for i, j in combinations(range(len(saes)), 2):
        vals = stability_pair(
            saes[i],
            saes[j],
            codes_a=_at(codes, i),
            codes_b=_at(codes, j),
            alive_a=_at(alive, i),
            alive_b=_at(alive, j),
            enc_a=_at(encs, i),
            enc_b=_at(encs, j),
            init_a=_at(inits, i),
            init_b=_at(inits, j),
            seed=seed,
            **pair_kwargs,
        )
        for name, mv in vals.items():
            per_pair.setdefault(name, []).append(mv)
    pairs = list(combinations(range(len(saes)), 2))
    out = {name: _aggregate(mvs, pairs, n_boot, seed) for name, mvs in per_pair.items()}
    per_latent = per_latent_stability(saes[0], saes[1:])
    out["pw_mcc"].extra["per_latent_ref0"] = per_latent.mean(axis=1).tolist()
    return out


def _at(xs: list[Any] | None, i: int) -> Any:
    return None if xs is None else xs[i]


def _aggregate(
    mvs: list[MetricValue], pairs: list[tuple[int, int]], n_boot: int, seed: int
) -> MetricValue:
    vals = np.array([mv.value for mv in mvs])
    lo, hi = seed_bootstrap_ci(vals, [a for a, _ in pairs], [b for _, b in pairs], n_boot, seed)
    ci = None if np.isnan(lo) else (lo, hi)
    first = mvs[0]
    return metric_value(
        first.name,
        float(vals.mean()),
        float(np.mean([mv.baseline for mv in mvs])),
        baseline_std=float(np.mean([mv.baseline_std for mv in mvs])),
        baseline_kind=first.baseline_kind,
        baseline_init=float(np.mean([mv.baseline_init for mv in mvs])),
        n_latents=first.n_latents,
        dead_included=first.dead_included,
        ci=ci,
        note=first.note,
        extra={"pairs": vals.tolist(), "n_latents_pairs": [list(mv.n_latents) for mv in mvs]},
        baseline_subspace=float(np.mean([mv.baseline_subspace for mv in mvs])),
        baseline_acts=float(np.mean([mv.baseline_acts for mv in mvs])),
    )
