"""One SVD per decoder: the reused bases and shared baseline draws give the plain values, bit for bit.

The reference computations below are the per-call ones the metrics used before the
reuse: a fresh :func:`row_basis` for every rank and for the span, and one Monte Carlo
pass (fresh draws, fresh SVDs) per metric and baseline kind.
"""

from __future__ import annotations

from itertools import combinations

import pytest
import torch

from husai.metrics import baselines as bl
from husai.metrics import data_baselines as db
from husai.metrics import stability_pair
from husai.metrics import subspace as sub
from husai.metrics.subspace import principal_cosines, row_basis


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUSAI_CACHE_DIR", "off")
    sub._BASES.clear()
    bl._RANDOM_UNIT.clear()
    db._CACHE.clear()


def plain_subspace(a: torch.Tensor, b: torch.Tensor, r: int) -> float:
    q_a, q_b = row_basis(a)[:r], row_basis(b)[:r]
    cos = principal_cosines(q_a, q_b)
    return float((cos**2).sum() / max(q_a.shape[0], q_b.shape[0], 1))


def plain_span(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = principal_cosines(row_basis(a), row_basis(b))
    return float((cos**2).mean()) if cos.numel() else 0.0


def plain_baseline(metric: str, n_a: int, n_b: int, sampler: bl.Sampler, trials: int, **kw):
    """One Monte Carlo pass for one metric, fresh SVDs in every trial."""
    fns = {"subspace_overlap": plain_subspace, "span_overlap": plain_span}

    def one(gen: torch.Generator) -> float:
        a, b = sampler(n_a, gen), sampler(n_b, gen)
        if metric in fns:
            return fns[metric](a, b, **kw)
        enc = (sampler(n_a, gen), sampler(n_b, gen)) if metric in bl.ENCODER_METRICS else ()
        return bl.RANDOM_METRICS[metric](a, b, *enc, **kw)

    return bl.monte_carlo(one, trials, 0)


def rank_deficient(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g)


SHAPES = [  # (n_a, n_b, d, rank of a or None)
    (64, 96, 32, None),
    (12, 20, 48, None),  # fewer latents than d: r = 64 exceeds both
    (40, 40, 24, 5),  # rank-deficient a
    (7, 300, 16, 3),
]


@pytest.mark.parametrize(("n_a", "n_b", "d", "rank"), SHAPES)
def test_pair_metrics_equal_the_plain_ones(n_a: int, n_b: int, d: int, rank: int | None) -> None:
    g = torch.Generator().manual_seed(n_a + n_b + d)
    a = rank_deficient(n_a, d, rank, 1) if rank else torch.randn(n_a, d, generator=g)
    b = torch.randn(n_b, d, generator=g)
    b[0] = 0.0  # a dead row
    for _ in range(2):  # cold, then from the cache
        for r in (1, 4, 8, 16, 64):
            assert sub.subspace_overlap(a, b, r=r) == plain_subspace(a, b, r)
        assert sub.span_overlap(a, b) == plain_span(a, b)
    assert len(sub._BASES) == 2


def test_a_tensor_changed_in_place_gets_a_new_basis() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 16, generator=g), torch.randn(30, 16, generator=g)
    before = sub.subspace_overlap(a, b, r=4)
    a[:, :8].mul_(0.01)  # tracked in-place change
    assert sub.subspace_overlap(a, b, r=4) == plain_subspace(a, b, 4) != before
    a.data[:4] = b[:4]  # untracked by the version counter
    assert sub.subspace_overlap(a, b, r=4) == plain_subspace(a, b, 4)
    a.numpy()[:] = b.numpy()  # through shared numpy memory
    assert sub.subspace_overlap(a, b, r=4) == plain_subspace(a, b, 4) == pytest.approx(1.0)


def test_the_cache_keeps_within_its_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sub, "CACHE_MAX_BYTES", 3 * 16 * 16 * 8)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(32, 16, generator=g) for _ in range(5)]
    for x in xs:
        sub.cached_row_basis(x)
    assert len(sub._BASES) == 3
    assert torch.equal(sub.cached_row_basis(xs[0]), row_basis(xs[0]))


@pytest.mark.parametrize("kind", ["sphere", "subspace", "acts"])
def test_shared_draws_give_each_metrics_own_baseline(kind: str) -> None:
    d, n_a, n_b, trials = 24, 30, 18, 3
    g = torch.Generator().manual_seed(5)
    ref = db.data_reference(torch.randn(200, 6, generator=g) @ torch.randn(6, d, generator=g))
    specs: list[bl.MetricSpec] = [
        ("subspace_overlap", {"r": 4}),
        ("pw_mcc", {}),
        ("shared_fraction", {"tau": 0.5}),
        ("subspace_overlap", {"r": 64}),
        ("span_overlap", {}),
    ]
    if kind == "sphere":
        got = bl.random_unit_baseline_many(specs, n_a, n_b, d, trials)
        sampler = bl.sphere_sampler(d)
    else:
        got = db.data_baseline_many(specs, kind, n_a, n_b, ref, trials)
        sampler, (n_a, n_b) = db.SAMPLERS[kind](ref), sorted((n_a, n_b))
    for (metric, params), value in zip(specs, got, strict=True):
        assert value == plain_baseline(metric, n_a, n_b, sampler, trials, **params)


def _pairs(n: int, d: int, seeds: int, *, alive: bool):
    g = torch.Generator().manual_seed(n * d)
    acts = torch.randn(256, 5, generator=g) @ torch.randn(5, d, generator=g)
    decs = [torch.randn(n, d, generator=g) for _ in range(2 * seeds)]
    ref = db.data_reference(acts)
    for i, j in combinations(range(seeds), 2):
        kw = {"init_a": decs[seeds + i], "init_b": decs[seeds + j]}
        if alive:
            codes = [torch.relu(acts @ decs[k].T - 1.0) for k in (i, j)]
            kw.update(codes_a=codes[0], codes_b=codes[1])
        yield decs[i], decs[j], kw, ref


def test_stability_pair_decomposes_each_decoder_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []

    def counted(x, rtol=1e-6):
        calls.append(tuple(x.shape))
        return row_basis(x, rtol)

    monkeypatch.setattr(sub, "row_basis", counted)
    monkeypatch.setattr(bl, "row_basis", counted)
    seeds, trials = 4, 2
    for a, b, kw, ref in _pairs(40, 64, seeds, alive=False):
        out = stability_pair(a, b, trials=trials, data=ref, **kw)
        for r in (8, 16, 32):
            mv = out[f"subspace_overlap_r{r}"]
            assert mv.value == plain_subspace(a, b, r)
            assert mv.baseline_init == plain_subspace(kw["init_a"], kw["init_b"], r)
        assert out["span_overlap"].value == plain_span(a, b)
    # trained + init decoders once each; per baseline kind, 2 draws per trial, once
    assert len(calls) == 2 * seeds + 3 * 2 * trials


def test_stability_pair_baselines_equal_the_per_metric_ones() -> None:
    (a, b, kw, ref), *_ = _pairs(20, 12, 2, alive=True)
    out = stability_pair(a, b, trials=3, data=ref, **kw)
    samplers = {"": bl.sphere_sampler(12), "_subspace": db.subspace_sampler(ref)}
    samplers["_acts"] = db.acts_sampler(ref)
    for suffix, sampler in samplers.items():
        field = f"baseline{suffix}"
        expect = plain_baseline("subspace_overlap", 20, 20, sampler, 3, r=8)[0]
        assert getattr(out["subspace_overlap_r8"], field) == expect
        assert (
            getattr(out["span_overlap"], field)
            == plain_baseline("span_overlap", 20, 20, sampler, 3)[0]
        )
        assert getattr(out["pw_mcc"], field) == plain_baseline("pw_mcc", 20, 20, sampler, 3)[0]
