"""dynamics.parquet rows of a unit: PW-MCC at each decoder snapshot over all latents and over
the latents alive at that step, on planted decoders whose answer is known."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from husai.experiments.unit import _dynamics_rows
from husai.metrics import pw_mcc, random_unit_baseline
from husai.metrics.data_baselines import data_baselines, data_reference

SEEDS, S, D, N_ALIVE = [0, 1, 2], 8, 16, 5


def _unit_and_payload():
    unit = SimpleNamespace(
        sae_train=SimpleNamespace(init_seeds=SEEDS),
        sae_cfgs=[SimpleNamespace(k=2)],
        sparsity_name="k",
        arch="topk",
        d_sae=S,
        hook="blocks.0.hook_resid_post",
        checkpoint="final",
    )
    return unit, SimpleNamespace(
        unit=unit, unit_id="u0", metrics=SimpleNamespace(baseline_trials=4)
    )


def _planted() -> tuple[torch.Tensor, torch.Tensor]:
    """Three seeds whose alive latents are the same 5 directions in different orders and
    whose 3 dead latents are independent random directions."""
    gen = torch.Generator().manual_seed(0)
    shared = torch.nn.functional.normalize(torch.randn(N_ALIVE, D, generator=gen), dim=1)
    dec, alive = torch.empty(len(SEEDS), S, D), torch.zeros(len(SEEDS), S, dtype=torch.bool)
    for n in range(len(SEEDS)):
        rows = torch.randperm(S, generator=gen)
        alive[n, rows[:N_ALIVE]] = True
        dec[n, rows[:N_ALIVE]] = shared[torch.randperm(N_ALIVE, generator=gen)]
        dec[n, rows[N_ALIVE:]] = torch.randn(S - N_ALIVE, D, generator=gen)
    return dec, alive


def test_alive_rows_score_the_shared_directions_and_all_rows_do_not() -> None:
    unit, payload = _unit_and_payload()
    dec, alive = _planted()
    data = data_reference(torch.randn(200, D, generator=torch.Generator().manual_seed(1)))
    group = SimpleNamespace(snapshots={0: dec, 10: dec}, snapshot_alive={10: alive})
    rows = {(r.step, r.metric): r for r in _dynamics_rows(unit, payload, group, data)}
    # step 0 has no alive mask (a checkpoint of an older version): only the all-latent row
    assert set(rows) == {(0, "pw_mcc"), (10, "pw_mcc"), (10, "pw_mcc_alive")}
    every = rows[(10, "pw_mcc")]
    expected = [pw_mcc(dec[i], dec[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert every.value == pytest.approx(sum(expected) / 3) and every.value < 0.9
    assert every.baseline == pytest.approx(random_unit_baseline("pw_mcc", S, S, D, trials=4)[0])
    only = rows[(10, "pw_mcc_alive")]
    assert only.value == pytest.approx(1.0, abs=1e-6)
    assert only.baseline == pytest.approx(
        random_unit_baseline("pw_mcc", N_ALIVE, N_ALIVE, D, trials=4)[0]
    )
    extra = data_baselines("pw_mcc", N_ALIVE, N_ALIVE, data, 4)
    assert only.baseline_subspace == pytest.approx(extra["subspace"])
    assert only.baseline_hardest == pytest.approx(max(only.baseline, *extra.values()))


def test_seeds_with_no_alive_latent_score_zero_beside_zero_baselines() -> None:
    unit, payload = _unit_and_payload()
    dec, _ = _planted()
    data = data_reference(torch.randn(200, D, generator=torch.Generator().manual_seed(1)))
    dead = torch.zeros(len(SEEDS), S, dtype=torch.bool)
    group = SimpleNamespace(snapshots={7: dec}, snapshot_alive={7: dead})
    only = next(r for r in _dynamics_rows(unit, payload, group, data) if r.metric == "pw_mcc_alive")
    assert only.value == 0.0 and only.baseline == 0.0 and only.baseline_hardest == 0.0
