"""``husai analyze``: stability (and optionally ground truth) of a set of SAE directories.

Reads two or more distinct SAE directories (HUSAI or SAELens format, via
``husai.saes.load_sae``; a directory of SAE directories stands for all of them, plain
files are skipped) and refuses repeats, identical weights, non-finite weights and a
``cfg.json`` whose widths disagree with the weights. It computes every stability
metric over all pairs with its random-unit baseline. With
``--ground-truth ACTIVATIONS_DIR`` (an activation directory with ``acts.safetensors``,
``planes.safetensors`` and ``meta.json``) it also encodes the activations, adds the
alive-only and activation metrics, and the ground-truth report of each SAE plus the
frequency allocation across SAEs. Writes JSON atomically; returns a printable table.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from husai.errors import UserError
from husai.io import atomic_write_json, load_safetensors
from husai.metrics.baselines import MetricValue
from husai.metrics.ground_truth import (
    frequency_allocation,
    ground_truth_report,
    load_planes,
    report_to_json,
)
from husai.metrics.inputs import as_decoder, as_encoder, load_sae_dir
from husai.metrics.stability import stability_set
from husai.saes.io import CFG_FILE, WEIGHTS_FILE, LoadedSAE

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
    sae_dirs, saes = load_sae_dirs(sae_dirs)
    decs = [as_decoder(s) for s in saes]
    codes = acts = planes = modulus = None
    if ground_truth is not None:
        acts, planes, modulus = _load_ground_truth(Path(ground_truth), saes[0].d_in)
        codes = [_encode(s, acts) for s in saes]
    result: dict[str, Any] = {"sae_dirs": [str(p) for p in sae_dirs], "ground_truth": None}
    stab = stability_set(
        decs, codes=codes, encs=[as_encoder(s) for s in saes], trials=trials, seed=seed
    )
    result["stability"] = {k: v.to_dict() for k, v in stab.items()}
    n = len(saes)
    lines = _table(stab, f"stability over {n} SAEs ({n * (n - 1) // 2} pairs)")
    if planes is not None:
        reports = {
            str(p): ground_truth_report(dec, planes, c, modulus, trials=trials or 8, seed=seed)
            for p, dec, c in zip(sae_dirs, decs, codes, strict=True)
        }
        result["ground_truth"] = {
            "activations": str(ground_truth),
            "per_sae": {k: report_to_json(r) for k, r in reports.items()},
            "allocation": frequency_allocation(decs, planes.key_only()),
        }
        for path, rep in reports.items():
            mvs = {k: v for k, v in rep.items() if isinstance(v, MetricValue)}
            lines += [""] + _table(mvs, f"ground truth: {path}")
    atomic_write_json(out_json, result)
    return "\n".join(lines)


def load_sae_dirs(
    paths: list[Path], command: str = "analyze"
) -> tuple[list[Path], list[LoadedSAE]]:
    """Two or more distinct, checked SAEs of one input width, from what a user passed.

    :func:`expand_sae_dirs`, then :func:`check_sae` and :func:`refuse_identical` on each,
    then one ``d_in`` for all; ``command`` names the command in the error lines.
    """
    dirs = expand_sae_dirs([Path(p) for p in paths], command)
    saes = [load_sae_dir(p) for p in dirs]
    for path, sae in zip(dirs, saes, strict=True):
        check_sae(path, sae)
    refuse_identical(dirs, saes)
    if len({sae.d_in for sae in saes}) != 1:
        widths = ", ".join(f"{p} d_in={s.d_in}" for p, s in zip(dirs, saes, strict=True))
        raise UserError(f"{command}: SAEs read different input widths ({widths})")
    return dirs, saes


def expand_sae_dirs(paths: list[Path], command: str = "analyze") -> list[Path]:
    """Two or more distinct SAE directories from what a user passed.

    A directory holding SAE directories (``husai train-saes --out``) stands for all of
    them; a plain file (the ``group_*.json`` a glob picks up) or a hidden directory
    (``.checkpoint_*``) is skipped with a log line.
    """
    dirs = [d for path in paths for d in _sae_dirs_in(path, command)]
    seen: dict[Path, Path] = {}
    for d in dirs:
        if d.resolve() in seen:
            raise UserError(f"{d}: given twice (also as {seen[d.resolve()]}); pass each SAE once")
        seen[d.resolve()] = d
    if len(dirs) < 2:
        got = f"got {len(dirs)}" + (f" ({dirs[0]})" if dirs else "")
        raise UserError(f"{command}: expected at least 2 SAE directories to compare, {got}")
    return dirs


def is_sae_dir(path: Path) -> bool:
    """Whether ``path`` holds ``cfg.json`` and ``sae_weights.safetensors``."""
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _sae_dirs_in(path: Path, command: str) -> list[Path]:
    if is_sae_dir(path):
        return [path]
    if path.is_file() or (path.is_dir() and path.name.startswith(".")):
        what = "a file" if path.is_file() else "a hidden directory, e.g. a training checkpoint"
        log.warning("%s: skipping %s (%s, not an SAE directory)", command, path, what)
        return []
    children = sorted(c for c in path.iterdir() if is_sae_dir(c)) if path.is_dir() else []
    if not children:
        raise UserError(
            f"{path}: not an SAE directory (expected {CFG_FILE} and {WEIGHTS_FILE} in it, "
            "or SAE directories under it)"
        )
    log.info("%s: %s holds %d SAE directories", command, path, len(children))
    return children


def check_sae(path: Path, sae: LoadedSAE) -> None:
    """One-line errors for weights that disagree with ``cfg.json`` or are not finite."""
    d_in, d_sae = sae.W_enc.shape
    if tuple(sae.W_dec.shape) != (d_sae, d_in):
        raise UserError(
            f"{path / WEIGHTS_FILE}: W_dec: expected shape {(d_sae, d_in)} (from W_enc "
            f"{tuple(sae.W_enc.shape)}), got {tuple(sae.W_dec.shape)}"
        )
    for field, actual in (("d_in", d_in), ("d_sae", d_sae)):
        stated = sae.cfg.get(field)
        if stated is not None and stated != actual:
            raise UserError(
                f"{path / CFG_FILE}: {field}: expected {actual} (the weights' shape), got {stated!r}"
            )
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        t = getattr(sae, name)
        if t is not None and not bool(torch.isfinite(t).all()):
            raise UserError(
                f"{path / WEIGHTS_FILE}: {name}: expected finite values, got NaN or inf"
            )


def refuse_identical(sae_dirs: list[Path], saes: list[LoadedSAE]) -> None:
    """Two directories with the same weights would score a false 1.0: refuse them."""
    seen: dict[str, Path] = {}
    for path, sae in zip(sae_dirs, saes, strict=True):
        digest = hashlib.sha256()
        for t in (sae.W_enc, sae.W_dec):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        key = digest.hexdigest()
        if key in seen:
            raise UserError(
                f"{path}: same weights as {seen[key]} (a duplicated SAE scores a false 1.0)"
            )
        seen[key] = path


def _load_ground_truth(acts_dir: Path, d_in: int) -> tuple[Tensor, Any, int | None]:
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
