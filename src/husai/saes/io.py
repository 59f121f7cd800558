"""SAE directories in SAELens format: ``cfg.json`` + ``sae_weights.safetensors``.

Writing: each SAE gets W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
b_dec [d_in] and, for JumpReLU inference, threshold [d_sae]. Each architecture's
module says how it is saved (:class:`~husai.saes.base.Architecture`): its SAELens
architecture, 'standard', 'topk' or 'jumprelu' (BatchTopK and Matryoshka save as
'jumprelu', a JumpReLU at the threshold estimated in training, as SAELens itself saves
BatchTopK), and the fields SAELens needs beyond the common ones (topk's ``k`` and
``rescale_acts_by_decoder_norm = false``). Flags whose defaults differ between SAELens'
training and inference configs are written explicitly: ``apply_b_dec_to_input =
true`` and ``normalize_activations = "none"`` (our scale is folded into the weights,
see :mod:`husai.saes.trainer`). A ``husai`` sub-dict records the HUSAI architecture,
its config, init seed, sparsity, training config, the folded scale and the
architecture's own fields (Matryoshka's prefixes).

Where the activations came from goes in SAELens' ``metadata``: ``hook_name`` (the full
TransformerLens hook name, where ``HookedSAETransformer.add_sae`` splices; without it
SAELens skips the SAE), ``model_name`` (the name of the transformer's run),
``model_class_name``, ``prepend_bos`` (false: HUSAI inputs carry no BOS),
``context_size`` and ``sae_lens_version`` (without it SAELens reads the file as pre-6.0
and drops the metadata). An SAE on a ``hook_z`` gets ``reshape_activations = "hook_z"``:
SAELens then flattens (heads, d_head) as HUSAI does when it extracts those activations.

Naming: :func:`save_member` saves one SAE of a trained group under the one SAE id
(:func:`husai.layout.sae_id`); study units and ``husai train-saes`` both call it.

Reading (:func:`load_sae`) accepts our directories and SAELens ones: inference
configs ('standard', 'topk', 'jumprelu') and training saves ('batchtopk', whose
scalar ``topk_threshold`` becomes a JumpReLU threshold). A foreign SAE loads as the
registered architecture that reads its SAELens architecture
(:func:`husai.saes.registry.reading_saelens`). A topk SAE saved with
``rescale_acts_by_decoder_norm = true`` has the decoder norms folded into the encoder
on load (exactly equivalent), so ``W_dec`` rows are unit norm.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from husai import layout
from husai.errors import UserError
from husai.io import atomic_save_safetensors, atomic_write_json
from husai.saes.base import BatchedSAE
from husai.saes.registry import reading_saelens
from husai.saes.trainer import GroupResult

log = logging.getLogger(__name__)
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.54.0"
"""The SAELens release whose cfg.json we write; SAELens reads a cfg.json without a
``sae_lens_version`` as pre-6.0 and then drops its ``metadata`` (hook_name included)."""
SAELENS_READABLE = ("standard", "topk", "jumprelu", "batchtopk")
"""The SAELens architectures :func:`load_sae` can read."""


def save_sae(
    sae_dir: str | Path,
    group_or_sae: Any,
    index: int,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    context_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model ``index`` of a GroupResult or BatchedSAE to ``sae_dir`` (SAELens format).

    ``hook_name`` (full TransformerLens name, e.g. ``blocks.0.hook_resid_post``),
    ``model_name`` (the transformer's run) and ``context_size`` become SAELens' ``metadata``;
    every HUSAI writer passes them. ``extra`` is merged into the ``husai`` sub-dict.
    """
    sae_dir = Path(sae_dir)
    if hook_name is None:
        log.warning("%s: saved without hook_name; SAELens' add_sae will skip this SAE", sae_dir)
    sae: BatchedSAE = getattr(group_or_sae, "sae", group_or_sae)
    if not 0 <= index < sae.n_models:
        raise UserError(f"index: expected 0 <= index < {sae.n_models}, got {index}")
    tensors = {
        "W_enc": sae.W_enc[index],
        "W_dec": sae.W_dec[index],
        "b_enc": sae.b_enc[index],
        "b_dec": sae.b_dec[index],
    }
    if sae.arch.saelens_architecture == "jumprelu":
        tensors["threshold"] = sae.threshold[index]
    atomic_save_safetensors(
        sae_dir / WEIGHTS_FILE, {k: v.detach().float() for k, v in tensors.items()}
    )
    metadata = saelens_metadata(hook_name, model_name, context_size)
    atomic_write_json(
        sae_dir / CFG_FILE, _cfg_dict(sae, group_or_sae, index, metadata, extra or {})
    )
    return sae_dir


def save_member(
    parent: str | Path,
    group: GroupResult,
    index: int,
    *,
    hook_name: str | None,
    model_name: str | None,
    context_size: int | None,
    extra: dict[str, Any] | None = None,
    group_tag: str | None = None,
) -> Path:
    """Save member ``index`` of a trained group as ``parent/<sae_id>`` (:func:`save_sae`).

    Study units and ``husai train-saes`` both save through here, so an SAE is named one
    way: :func:`husai.layout.sae_id` of its sparsity and seed (``k16-seed0``), behind
    ``<group_tag>_`` where several groups share ``parent`` (train-saes:
    ``topk_w512_k16-seed0``).
    """
    cfg, seed = group.members[index]
    arch = group.sae.arch
    name = layout.sae_id(arch.sparsity_name, arch.sparsity(cfg), seed)
    return save_sae(
        Path(parent) / (f"{group_tag}_{name}" if group_tag else name),
        group,
        index,
        hook_name=hook_name,
        model_name=model_name,
        context_size=context_size,
        extra=extra,
    )


def saelens_metadata(
    hook_name: str | None, model_name: str | None, context_size: int | None = None
) -> dict[str, Any]:
    """SAELens' ``cfg.json`` ``metadata`` for an SAE on ``hook_name`` of a HUSAI transformer."""
    meta = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "hook_name": hook_name,
        "model_name": model_name,
        "model_class_name": "HookedTransformer",
        "prepend_bos": False,
        "context_size": context_size,
    }
    return {k: v for k, v in meta.items() if v is not None}


def _cfg_dict(
    sae: BatchedSAE, group: Any, index: int, metadata: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    cfg = sae.arch.cfgs[index]
    hook_z = metadata.get("hook_name", "").endswith("hook_z")
    out: dict[str, Any] = {
        "architecture": sae.arch.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if hook_z else "none",
        "metadata": metadata,
    }
    out |= sae.arch.saelens_fields(cfg)
    husai: dict[str, Any] = {
        "format_version": 1,
        "arch": cfg.arch,
        "sae_config": cfg.model_dump(mode="json"),
        "sparsity_name": sae.arch.sparsity_name,
        "sparsity": sae.arch.sparsity(cfg),
    }
    if hasattr(group, "members"):
        train_cfg = group.train_cfg
        husai |= {
            "init_seed": group.members[index][1],
            "model_index": index,
            "steps": group.steps,
            "converged_step": group.converged_step[index],
            "norm_scale": group.norm_scale,
            "norm_scale_folded": True,
            "train_config": train_cfg.model_dump(mode="json") if train_cfg else None,
            "data_seed": train_cfg.data_seed if train_cfg else None,
        }
    out["husai"] = husai | sae.arch.husai_fields(cfg) | extra
    return out


@dataclass
class LoadedSAE:
    """One SAE read from a HUSAI or SAELens directory, acting on raw activations."""

    W_enc: Tensor
    W_dec: Tensor
    b_enc: Tensor
    b_dec: Tensor
    threshold: Tensor | None
    arch: str
    cfg: dict[str, Any]
    k: int | None = None
    apply_b_dec_to_input: bool = True

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @torch.no_grad()
    def encode(self, x_BD: Float[Tensor, "B D"]) -> Float[Tensor, "B S"]:
        x_in = x_BD.float() - self.b_dec if self.apply_b_dec_to_input else x_BD.float()
        pre_BS = x_in @ self.W_enc + self.b_enc
        if self.k is not None:
            vals, idx = pre_BS.topk(self.k, dim=-1, sorted=True)
            return torch.zeros_like(pre_BS).scatter_(-1, idx, torch.relu(vals))
        if self.threshold is not None:
            return torch.relu(pre_BS) * (pre_BS > self.threshold)
        return torch.relu(pre_BS)

    @torch.no_grad()
    def decode(self, codes_BS: Float[Tensor, "B S"]) -> Float[Tensor, "B D"]:
        return codes_BS @ self.W_dec + self.b_dec


def load_sae(sae_dir: str | Path) -> LoadedSAE:
    """Read an SAE directory written by HUSAI or by SAELens (``save_model`` / inference save)."""
    from husai.io import load_safetensors

    sae_dir = Path(sae_dir)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (sae_dir / name).is_file():
            raise UserError(f"{sae_dir}: not an SAE directory ({name} missing)")
    try:
        cfg = json.loads((sae_dir / CFG_FILE).read_text())
    except json.JSONDecodeError:
        raise UserError(f"{sae_dir / CFG_FILE}: not valid JSON") from None
    w = {k: v.float() for k, v in load_safetensors(sae_dir / WEIGHTS_FILE).items()}
    saelens_arch = cfg.get("architecture", "standard")
    if saelens_arch not in SAELENS_READABLE:
        raise UserError(f"{sae_dir / CFG_FILE}: architecture {saelens_arch!r} is not supported")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise UserError(
            f"{sae_dir / CFG_FILE}: normalize_activations {cfg['normalize_activations']!r} "
            "is not supported; fold the scaling into the weights first"
        )
    missing = {"W_enc", "W_dec", "b_dec"} - set(w)
    if missing:
        raise UserError(f"{sae_dir / WEIGHTS_FILE}: missing tensors {sorted(missing)}")
    b_enc = w.get("b_enc", torch.zeros(w["W_enc"].shape[1]))
    threshold = w.get("threshold")
    if saelens_arch == "batchtopk":
        threshold = torch.full_like(b_enc, float(w["topk_threshold"]))
    k = int(cfg["k"]) if saelens_arch == "topk" else None
    W_enc, W_dec = w["W_enc"], w["W_dec"]
    if cfg.get("rescale_acts_by_decoder_norm", False):
        norms_S = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms_S, b_enc * norms_S, W_dec / norms_S[:, None]
        if threshold is not None:
            threshold = threshold.clone()
    arch = cfg.get("husai", {}).get("arch", reading_saelens(saelens_arch) or saelens_arch)
    return LoadedSAE(
        W_enc=W_enc,
        W_dec=W_dec,
        b_enc=b_enc,
        b_dec=w["b_dec"],
        threshold=threshold,
        arch=arch,
        cfg=cfg,
        k=k,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
    )
