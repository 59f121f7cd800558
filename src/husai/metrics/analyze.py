"""``husai analyze``: stability (and optionally ground truth) of a set of SAE directories.

Reads two or more SAE directories (HUSAI or SAELens format, via ``husai.saes.load_sae``)
and computes every stability metric over all pairs with its random-unit baseline. With
``--ground-truth ACTIVATIONS_DIR`` (an activation directory with ``acts.safetensors``,
``planes.safetensors`` and ``meta.json``) it also encodes the activations, adds the
alive-only and activation metrics, and the ground-truth report of each SAE plus the
frequency allocation across SAEs. Writes JSON atomically; returns a printable table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from husai.errors import UserError
from husai.io import atomic_write_json
from husai.metrics.baselines import MetricValue
from husai.metrics.ground_truth import (
    frequency_allocation,
    ground_truth_report,
    key_planes,
    load_planes,
    report_to_json,
)
from husai.metrics.inputs import as_decoder, as_encoder, load_sae_dir
from husai.metrics.stability import stability_set

log = logging.getLogger(__name__)


def analyze_dirs(
    sae_dirs: list[Path],
    ground_truth: Path | None,
    out_json: Path,
    *,
    trials: int | None = None,
    seed: int = 0,
) -> str:
    """Analyse SAE directories; write ``out_json``; return the table text.

    ``trials``: Monte Carlo draws per random baseline (default: by problem size).
    """
    sae_dirs = [Path(p) for p in sae_dirs]
    if not sae_dirs:
        raise UserError("analyze: expected at least one SAE directory")
    saes = [load_sae_dir(p) for p in sae_dirs]
    decs = [as_decoder(s) for s in saes]
    d_ins = {int(dec.shape[1]) for dec in decs}
    if len(d_ins) != 1:
        raise UserError(f"analyze: SAEs read different input widths {sorted(d_ins)}")
    codes = acts = planes = modulus = None
    if ground_truth is not None:
        acts, planes, modulus = _load_ground_truth(Path(ground_truth), d_ins.pop())
        codes = [_encode(s, acts) for s in saes]
    result: dict[str, Any] = {"sae_dirs": [str(p) for p in sae_dirs], "ground_truth": None}
    lines: list[str] = []
    if len(saes) >= 2:
        stab = stability_set(
            decs, codes=codes, encs=[as_encoder(s) for s in saes], trials=trials, seed=seed
        )
        result["stability"] = {k: v.to_dict() for k, v in stab.items()}
        lines += _table(
            stab, f"stability over {len(saes)} SAEs ({len(saes) * (len(saes) - 1) // 2} pairs)"
        )
    else:
        lines.append("stability: needs at least 2 SAE directories (got 1)")
    if planes is not None:
        reports = {
            str(p): ground_truth_report(dec, planes, c, modulus, trials=trials or 8, seed=seed)
            for p, dec, c in zip(sae_dirs, decs, codes, strict=True)
        }
        result["ground_truth"] = {
            "activations": str(ground_truth),
            "per_sae": {k: report_to_json(r) for k, r in reports.items()},
            "allocation": frequency_allocation(decs, key_planes(planes)),
        }
        for path, rep in reports.items():
            mvs = {k: v for k, v in rep.items() if isinstance(v, MetricValue)}
            lines += [""] + _table(mvs, f"ground truth: {path}")
    atomic_write_json(out_json, result)
    return "\n".join(lines)


def _load_ground_truth(acts_dir: Path, d_in: int) -> tuple[Tensor, Any, int | None]:
    from husai.io import load_safetensors

    acts_path = acts_dir / "acts.safetensors"
    if not acts_path.is_file():
        raise UserError(f"{acts_path}: missing (expected an activation directory)")
    acts = load_safetensors(acts_path)["acts"].float()
    if acts.shape[1] != d_in:
        raise UserError(
            f"{acts_path}: activations have width {acts.shape[1]}, the SAEs read {d_in}"
        )
    meta_path = acts_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    modulus = meta.get("modulus")
    if modulus is not None and acts.shape[0] != int(modulus) ** 2:
        modulus = None  # not the full p x p grid: no activation DFT purity
    return acts, load_planes(acts_dir), modulus


@torch.no_grad()
def _encode(sae: Any, acts_ND: Tensor, chunk: int = 8192) -> Tensor:
    return torch.cat(
        [sae.encode(acts_ND[i : i + chunk]) for i in range(0, acts_ND.shape[0], chunk)]
    )


def _table(mvs: dict[str, MetricValue], title: str) -> list[str]:
    head = f"{'metric':<22} {'value':>8} {'baseline':>9} {'kind':<12} {'excess':>8} {'ratio':>7} {'n_a,n_b':>11} {'dead':>5}  95% CI"
    lines = [title, head, "-" * len(head)]
    for name, mv in mvs.items():
        ci = "" if mv.ci is None else f"[{mv.ci[0]:.3f}, {mv.ci[1]:.3f}]"
        lines.append(
            f"{name:<22} {mv.value:>8.4f} {_num(mv.baseline):>9} {mv.baseline_kind:<12} "
            f"{_num(mv.excess):>8} {_num(mv.ratio, 2):>7} {f'{mv.n_latents[0]},{mv.n_latents[1]}':>11} "
            f"{'yes' if mv.dead_included else 'no':>5}  {ci}"
        )
    return lines


def _num(x: float, digits: int = 4) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"
