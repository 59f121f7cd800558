"""The device option: names resolve with one-line errors, the CPU path is the code without
the option (same bits), off-CPU units get their own ids, and, where CUDA exists, the
trainer on CUDA agrees with the CPU's to float32 rounding. On a machine without CUDA the
CUDA cases are skipped, saying so."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from husai.config import SAETrainConfig, StudyConfig, TopKSAEConfig
from husai.devices import factory_device, resolve_device, unit_device
from husai.errors import UserError
from husai.experiments.grid import expand_grid
from husai.saes import train_group
from husai.saes.trainer import BatchStream

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

CFGS = {
    "topk": [TopKSAEConfig(d_sae=48, k=3), TopKSAEConfig(d_sae=48, k=6)],
    "topk_wide": [TopKSAEConfig(d_sae=256, k=4)],  # the CPU's sparse path
}


def _acts(n: int = 400, d: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 40, generator=gen).relu() @ torch.randn(40, d, generator=gen)


def _tc(**kw) -> SAETrainConfig:
    base = dict(init_seeds=[1, 2], steps=12, batch_size=64, warmup_steps=2, dead_window=64)
    return SAETrainConfig(**(base | dict(plateau_tol=0.0, n_snapshots=3) | kw))


def test_names_resolve_and_bad_ones_are_one_line_errors() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(UserError, match="expected auto, cpu or cuda"):
        resolve_device("gpu")
    if not HAS_CUDA:
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


def test_factory_device_on_the_cpu_enters_nothing() -> None:
    with factory_device(torch.device("cpu")):
        assert torch.get_default_device().type == "cpu" and torch.zeros(1).device.type == "cpu"


@pytest.mark.parametrize("arch", sorted(CFGS))
def test_explicit_cpu_is_the_same_bits_as_no_device(arch: str) -> None:
    acts = _acts()
    plain = train_group(acts, CFGS[arch], _tc())
    on_cpu = train_group(acts, CFGS[arch], _tc(), device="cpu")
    for k in plain.sae.params:
        assert torch.equal(plain.sae.params[k], on_cpu.sae.params[k]), k
    assert plain.snapshots.keys() == on_cpu.snapshots.keys()


def test_batches_are_drawn_on_the_cpu_whatever_the_default_device() -> None:
    stream = BatchStream(100, 30, seed=4)
    assert stream.indices(5).device.type == "cpu"


@needs_cuda
@pytest.mark.parametrize("arch", sorted(CFGS))
def test_cuda_training_agrees_with_the_cpu_to_float32_rounding(arch: str) -> None:
    acts = _acts()
    cpu = train_group(acts, CFGS[arch], _tc())
    gpu = train_group(acts, CFGS[arch], _tc(), device="cuda")
    for k, v in cpu.sae.params.items():
        assert gpu.sae.params[k].device.type == "cpu"  # results come back on the CPU
        assert torch.allclose(v, gpu.sae.params[k], atol=2e-4, rtol=1e-3), k


def _study(device: str = "cpu") -> StudyConfig:
    return StudyConfig(
        grid={"archs": ["topk"], "widths": [16], "k": [2], "hooks": ["blocks.0.hook_resid_post"]},
        device=device,
    )


def test_cpu_unit_ids_are_unchanged_and_off_cpu_units_get_their_own() -> None:
    (unit,) = expand_grid(_study())
    assert unit.unit_id("acts") == unit.unit_id("acts", "cpu")
    assert unit.unit_id("acts", "cuda") != unit.unit_id("acts")
    assert unit_device("cpu", "local") == "cpu"
    assert unit_device("auto", "local") == ("cuda" if HAS_CUDA else "cpu")
    assert unit_device("cuda", "ray") == "cuda"  # Ray workers may hold the GPUs


@pytest.mark.skipif(HAS_CUDA, reason="checks the error of a machine without CUDA")
def test_run_with_cuda_on_a_cpu_machine_is_one_line_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "husai.cli", "run", "configs/studies/default.yaml"]
        + ["--device", "cuda", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --device cuda: CUDA is not available on this machine"
    ]
    assert not out.exists()


def test_the_device_benchmark_runs_on_the_cpu_at_tiny_sizes(tmp_path) -> None:
    """benchmarks/device_check.sh's benchmark, as its --cpu-smoke runs it (not a timing)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/device_bench.py", "--device", "cpu", "--tiny"]
        + ["--parts", "agreement,throughput", "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    agree = json.loads(out.read_text())["agreement"]
    assert set(agree) == {"topk_w64", "topk_w512", "relu_w256"} and max(agree.values()) == 0.0


def test_the_dense_auxk_of_the_cuda_path_equals_the_cpu_sparse_one() -> None:
    """TopK off the CPU takes AuxK through dense codes (Gao et al. 2024, App. A.2); on the
    same inputs it must give the CPU's sparse AuxK loss and gradients (checked here, on the
    CPU, since the CUDA branch cannot run on this machine)."""
    from husai.saes import init_group
    from husai.saes.base import model_mm
    from husai.saes.topk import dense_auxk

    sae = init_group(16, [TopKSAEConfig(d_sae=48, k=3)], _tc(init_seeds=[0]))
    params = [sae.params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")]
    for p in params:
        p.requires_grad_(True)
    x_NBD = _acts(64)[None]
    with torch.no_grad():
        x_in_NBD = x_NBD - sae.b_dec[:, None, :]
        pre_NBS = model_mm(x_in_NBD, sae.W_enc, sae.b_enc).relu_()
    err_NBD = 0.3 * torch.randn(x_NBD.shape, generator=torch.Generator().manual_seed(5))
    dead_NS = torch.zeros(1, 48, dtype=torch.bool)
    dead_NS[0, :20] = True
    cpu = sae.arch._auxk(sae, x_in_NBD, pre_NBS, err_NBD, dead_NS)
    dense = dense_auxk(sae.arch, sae, sae.pre_acts(x_NBD), -err_NBD, dead_NS)
    assert float(cpu) > 0 and torch.allclose(cpu, dense, rtol=1e-5)
    for a, b in zip(
        torch.autograd.grad(cpu.sum(), params),
        torch.autograd.grad(dense.sum(), params),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
