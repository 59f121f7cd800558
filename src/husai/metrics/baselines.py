"""Reported numbers with their baselines: ``MetricValue`` and Monte Carlo random-unit baselines.

Every number HUSAI reports is a :class:`MetricValue`: the value, the baseline it must be
read against, ``excess = value - baseline``, ``ratio = value / baseline``, how many latents
entered (``n_latents``) and whether dead latents were included.

Baseline kinds:

- ``random_unit`` (column ``baseline``): the same metric on random unit vectors (isotropic
  Gaussian rows, normalised) in the same ``d`` with the same numbers of latents (alive
  latents for the alive-only variants). Monte Carlo, seeded per trial, cached in memory and
  on disk (``$HUSAI_CACHE_DIR`` or ``~/.cache/husai``; set ``HUSAI_CACHE_DIR=off`` to
  disable). At d=128 with 1024 latents: PW-MCC ~0.27, MMCS ~0.30. On low-rank activations
  this is an easy bar: see the data-aware kinds.
- ``subspace`` and ``acts`` (columns ``baseline_subspace``, ``baseline_acts``): random
  dictionaries shaped like the activations, from :mod:`husai.metrics.data_baselines`.
  ``baseline_hardest`` is the largest of the three random baselines; verdicts are judged
  against it.
- ``init``: the metric on the SAEs at initialisation (same init scheme and seeds);
  the caller passes the init decoders. Stored as ``baseline_init``.
- ``permuted``: for activation-based metrics, the metric after shuffling one SAE's codes
  across inputs (same marginals, no correspondence).

Missing numbers are NaN in the dataclass (so ``float()`` always works) and ``None`` in
``to_dict()`` (valid JSON).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from husai.io import atomic_write_json
from husai.metrics.similarity import mmcs, pw_mcc, shared_fraction
from husai.metrics.subspace import (
    row_basis,
    span_overlap,
    span_overlap_of_bases,
    subspace_overlap,
    subspace_overlap_of_bases,
)

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
NAN = float("nan")


@dataclass(frozen=True)
class MetricValue:
    """One reported number with its baseline and its treatment of dead latents."""

    name: str
    value: float
    baseline: float = NAN
    baseline_kind: str = "random_unit"
    excess: float = NAN
    ratio: float = NAN
    n_latents: tuple[int, int] = (0, 0)
    dead_included: bool = True
    ci: tuple[float, float] | None = None
    baseline_std: float = NAN
    baseline_init: float = NAN
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    baseline_subspace: float = NAN
    baseline_acts: float = NAN

    @property
    def baseline_hardest(self) -> float:
        """The largest random baseline present (unit sphere, subspace, activation rows)."""
        return hardest(self.baseline, self.baseline_subspace, self.baseline_acts)

    @property
    def excess_hardest(self) -> float:
        return self.value - self.baseline_hardest

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "value": _finite(self.value),
            "baseline": _finite(self.baseline),
            "baseline_kind": self.baseline_kind,
            "baseline_std": _finite(self.baseline_std),
            "baseline_init": _finite(self.baseline_init),
            "baseline_subspace": _finite(self.baseline_subspace),
            "baseline_acts": _finite(self.baseline_acts),
            "baseline_hardest": _finite(self.baseline_hardest),
            "excess": _finite(self.excess),
            "ratio": _finite(self.ratio),
            "n_latents": list(self.n_latents),
            "dead_included": self.dead_included,
            "ci": None if self.ci is None else [_finite(c) for c in self.ci],
            "note": self.note,
        }
        if self.extra:
            out["extra"] = self.extra
        return out


def metric_value(
    name: str,
    value: float,
    baseline: float | None = None,
    *,
    baseline_std: float | None = None,
    baseline_kind: str = "random_unit",
    baseline_init: float | None = None,
    n_latents: tuple[int, int] = (0, 0),
    dead_included: bool = True,
    ci: tuple[float, float] | None = None,
    note: str = "",
    extra: dict[str, Any] | None = None,
    baseline_subspace: float | None = None,
    baseline_acts: float | None = None,
) -> MetricValue:
    """Build a MetricValue, deriving excess and ratio from the (unit-sphere) baseline."""
    base = NAN if baseline is None else float(baseline)
    ratio = float(value) / base if base == base and base != 0 else NAN
    return MetricValue(
        name=name,
        value=float(value),
        baseline=base,
        baseline_kind=baseline_kind,
        excess=float(value) - base,
        ratio=ratio,
        n_latents=(int(n_latents[0]), int(n_latents[1])),
        dead_included=dead_included,
        ci=ci,
        baseline_std=NAN if baseline_std is None else float(baseline_std),
        baseline_init=NAN if baseline_init is None else float(baseline_init),
        note=note,
        extra=extra or {},
        baseline_subspace=NAN if baseline_subspace is None else float(baseline_subspace),
        baseline_acts=NAN if baseline_acts is None else float(baseline_acts),
    )


def hardest(*baselines: float | None) -> float:
    """The largest finite baseline, NaN when none is finite."""
    vals = [float(b) for b in baselines if b is not None and math.isfinite(float(b))]
    return max(vals) if vals else NAN


def random_unit(n: int, d: int, generator: torch.Generator) -> Tensor:
    """``n`` random unit vectors in R^d (rows), uniform on the sphere."""
    x_ND = torch.randn(n, d, generator=generator)
    return x_ND / x_ND.norm(dim=1, keepdim=True).clamp_min(1e-12)


def default_trials(n_a: int, n_b: int) -> int:
    """Fewer draws for large problems (their spread is tiny): 4..32."""
    return int(min(32, max(4, 2e7 // max(1, n_a * n_b))))


MetricSpec = tuple[str, dict[str, Any]]
"""A metric of :data:`RANDOM_METRICS` and its parameters, e.g. ``("subspace_overlap", {"r": 8})``."""


def random_unit_baseline(
    metric: str,
    n_a: int,
    n_b: int,
    d: int,
    trials: int | None = None,
    seed: int = 0,
    **params: Any,
) -> tuple[float, float]:
    """Monte Carlo (mean, std) of ``metric`` on pairs of random unit-vector sets.

    ``metric`` is one of :data:`RANDOM_METRICS` (pw_mcc, pw_mcc_abs, mmcs, shared_fraction,
    subspace_overlap, span_overlap); ``params`` are passed to it (``tau``, ``r``).
    Trial ``t`` draws set A then set B (then encoders, where used) from
    ``torch.Generator().manual_seed(seed * 100003 + t)``.
    """
    return random_unit_baseline_many([(metric, params)], n_a, n_b, d, trials, seed)[0]


def random_unit_baseline_many(
    specs: list[MetricSpec],
    n_a: int,
    n_b: int,
    d: int,
    trials: int | None = None,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """:func:`random_unit_baseline` of every spec, the uncached ones from one set of draws.

    Every trial's pair is drawn once for all specs (:func:`draw_metric_many`); each
    result equals, and is cached as, the single-metric one.
    """
    check_specs(specs)
    trials = default_trials(n_a, n_b) if trials is None else int(trials)
    keys = [json.dumps([m, n_a, n_b, d, trials, seed, sorted(p.items())]) for m, p in specs]
    return sampled_baselines(_RANDOM_UNIT, keys, specs, (n_a, n_b), sphere_sampler(d), trials, seed)


def sampled_baselines(
    cache: BaselineCache,
    keys: list[str],
    specs: list[MetricSpec],
    n: tuple[int, int],
    sampler: Sampler,
    trials: int,
    seed: int,
) -> list[tuple[float, float]]:
    """Each spec's cached (mean, std), the missing ones from one Monte Carlo of ``sampler``."""

    def compute(idx: list[int]) -> list[tuple[float, float]]:
        todo = [specs[i] for i in idx]
        return monte_carlo_many(
            lambda gen: draw_metric_many(todo, n[0], n[1], sampler, gen), trials, seed, len(todo)
        )

    return cache.get_many(keys, compute)


def monte_carlo(
    fn: Callable[[torch.Generator], float], trials: int, seed: int
) -> tuple[float, float]:
    """(mean, std) of ``fn(generator)`` over ``trials`` seeded generators."""
    return monte_carlo_many(lambda gen: [fn(gen)], trials, seed, 1)[0]


def monte_carlo_many(
    fn: Callable[[torch.Generator], list[float]], trials: int, seed: int, width: int
) -> list[tuple[float, float]]:
    """(mean, std) of each of the ``width`` values of ``fn(generator)``, as :func:`monte_carlo`."""
    rows = [fn(torch.Generator().manual_seed(seed * 100003 + t)) for t in range(trials)]
    out = []
    for k in range(width):
        vals = [row[k] for row in rows]
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out.append((float(np.mean(vals)), std))
    return out


class BaselineCache:
    """Monte Carlo (mean, std) by key: in memory (cleared when full), then on disk."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: dict[str, tuple[float, float]] = {}

    def get_many(
        self, keys: list[str], compute: Callable[[list[int]], list[tuple[float, float]]]
    ) -> list[tuple[float, float]]:
        """The values of ``keys``; ``compute(indices)`` gives those in neither cache, at once."""
        found = {k: self._items.get(k) or disk_get(k) for k in keys}
        missing = [i for i, k in enumerate(keys) if found[k] is None and keys.index(k) == i]
        if missing:
            for i, value in zip(missing, compute(missing), strict=True):
                disk_put(keys[i], value)
                found[keys[i]] = value
        for key in keys:
            if key not in self._items and len(self._items) >= self.max_items:
                self._items.clear()
            self._items[key] = found[key]
        return [found[k] for k in keys]

    def clear(self) -> None:
        """Forget what is in memory (the disk cache stays)."""
        self._items.clear()


_RANDOM_UNIT = BaselineCache(512)


def disk_get(key: str) -> tuple[float, float] | None:
    """A cached (mean, std) for ``key``, or None (no cache, no file, unreadable file)."""
    path = _disk_path(key)
    if path is None or not path.is_file():
        return None
    try:
        mean, std = json.loads(path.read_text())["value"]
        return float(mean), float(std)
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring unreadable baseline cache %s", path)
        return None


def disk_put(key: str, value: tuple[float, float]) -> None:
    path = _disk_path(key)
    if path is None:
        return
    try:
        atomic_write_json(path, {"key": key, "value": list(value)})
    except OSError as err:
        log.warning("could not write baseline cache %s: %s", path, err)


def _disk_path(key: str) -> Path | None:
    root = os.environ.get("HUSAI_CACHE_DIR", "")
    if root.lower() in ("off", "0", "none"):
        return None
    base = Path(root) if root else Path.home() / ".cache" / "husai"
    digest = hashlib.sha256(f"v{_CACHE_VERSION}:{key}".encode()).hexdigest()[:24]
    return base / "baselines" / f"{digest}.json"


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


Sampler = Callable[[int, torch.Generator], Tensor]
"""Draws ``n`` random dictionary rows ``[n, d]`` from a generator: one random-baseline kind."""


def sphere_sampler(d: int) -> Sampler:
    """Uniform unit vectors on the sphere of R^d (the ``random_unit`` kind)."""
    return lambda n, gen: random_unit(n, d, gen)


def check_specs(specs: list[MetricSpec]) -> None:
    """A ValueError naming the first metric that has no random baseline."""
    for metric, _ in specs:
        if metric not in RANDOM_METRICS:
            raise ValueError(f"metric: expected one of {sorted(RANDOM_METRICS)}, got {metric!r}")


def draw_metric(
    metric: str, n_a: int, n_b: int, sampler: Sampler, gen: torch.Generator, **params: Any
) -> float:
    """``metric`` on one random pair: set A, then set B (then encoders A, B), from ``sampler``."""
    return draw_metric_many([(metric, params)], n_a, n_b, sampler, gen)[0]


def draw_metric_many(
    specs: list[MetricSpec], n_a: int, n_b: int, sampler: Sampler, gen: torch.Generator
) -> list[float]:
    """Every spec on one random pair, drawn as in :func:`draw_metric`.

    The subspace metrics (:data:`BASIS_METRICS`) share one SVD of each set.
    """
    check_specs(specs)
    dec_a, dec_b = sampler(n_a, gen), sampler(n_b, gen)
    enc: tuple[Tensor, ...] = ()
    if any(metric in ENCODER_METRICS for metric, _ in specs):
        enc = (sampler(n_a, gen), sampler(n_b, gen))
    bases: tuple[Tensor, Tensor] | None = None
    out = []
    for metric, params in specs:
        if metric in BASIS_METRICS:
            bases = bases or (row_basis(dec_a), row_basis(dec_b))
            out.append(BASIS_METRICS[metric](*bases, **params))
        else:
            args = enc if metric in ENCODER_METRICS else ()
            out.append(RANDOM_METRICS[metric](dec_a, dec_b, *args, **params))
    return out


def _pw_mcc_abs(a: Tensor, b: Tensor) -> float:
    return pw_mcc(a, b, signed=False)


def _shared_dec(a: Tensor, b: Tensor, tau: float = 0.7) -> float:
    return shared_fraction(a, b, tau=tau)


RANDOM_METRICS: dict[str, Callable[..., float]] = {
    "pw_mcc": pw_mcc,
    "pw_mcc_abs": _pw_mcc_abs,
    "mmcs": mmcs,
    "shared_fraction": shared_fraction,
    "shared_fraction_dec": _shared_dec,
    "subspace_overlap": subspace_overlap,
    "span_overlap": span_overlap,
}
"""Metrics with a Monte Carlo random baseline: name -> fn(set_a, set_b, **params)."""
ENCODER_METRICS = frozenset({"shared_fraction"})
"""Metrics that also take random encoders (drawn after the decoders, from the same sampler)."""
BASIS_METRICS: dict[str, Callable[..., float]] = {
    "subspace_overlap": subspace_overlap_of_bases,
    "span_overlap": span_overlap_of_bases,
}
"""Metrics of :data:`RANDOM_METRICS` computed from the sets' :func:`row_basis` bases."""
