"""Fourier analysis of a trained model run, written to ``<run_dir>/fourier.json``.

Reads the model's weights (the maths lives in :mod:`husai.model.fourier`). Frequencies are
those of the task's ground-truth group (:func:`husai.model.fourier.task_group`): Z_p for
add and sub, the discrete log of (Z/p)* (order p - 1, rows reordered by log, the token 0
left out) for mul, recorded under ``group`` for sub and mul (add keeps its original keys;
ops without a ground truth, such as div, are analysed over Z_p in residue order):

- ``we_norms``: Fourier norm per frequency of the number embeddings W_E[:p] (rows = input);
- ``wl_norms``: the same for the neuron-logit map W_L = W_out W_U (columns = output), which
  Nanda et al. 2023 use to read the key frequencies, being sparser than W_E;
- ``key_freqs``: the fewest frequencies carrying 90% of W_L's non-constant squared norm;
- ``gini_we``/``gini_wl`` and ``top8_share_we`` (share of W_E's non-constant squared Fourier
  norm in its 8 largest frequencies; ``top8_share_we_norm`` uses plain norms);
- ``progress``: per checkpoint, train/test loss, restricted loss (on all inputs) and excluded
  loss (on the training inputs) with the final key frequencies, along the answer's
  cos/sin(w_k s) with s = a+b, a-b or log a + log b (None unless the inputs are the whole grid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from husai.errors import UserError
from husai.io import atomic_write_json, load_safetensors
from husai.model.build import final_logits
from husai.model.fourier import (
    FourierGroup,
    frequency_norms,
    gini,
    key_frequencies,
    restricted_and_excluded,
    task_group,
    top_share,
)
from husai.model.store import checkpoint_file, list_checkpoints
from husai.tasks import ModularDataset

KEY_COVERAGE = 0.9


def weight_fourier(model: HookedTransformer, p: int, op: str = "add") -> dict[str, Any]:
    """Fourier norms of W_E and W_L in ``op``'s group, key frequencies, Gini and top-8 shares."""
    group = _analysis_group(op, p)
    we = frequency_norms(group.rows(model.embed.W_E[:p]))
    last = model.blocks[-1]
    wl = frequency_norms(group.rows((last.mlp.W_out @ model.unembed.W_U).T))
    extra = {} if group.op == "add" else {"group": group.info()}
    return {
        **extra,
        "we_norms": we.tolist(),
        "wl_norms": wl.tolist(),
        "key_freqs": key_frequencies(wl, KEY_COVERAGE),
        "key_freqs_we": key_frequencies(we, KEY_COVERAGE),
        "gini_we": gini(we[1:]),
        "gini_wl": gini(wl[1:]),
        "top8_share_we": top_share(we, 8),
        "top8_share_we_norm": top_share(we, 8, squared=False),
        "top8_share_wl": top_share(wl, 8),
    }


@torch.no_grad()
def progress_measures(
    model: HookedTransformer, data: ModularDataset, key_freqs: list[int]
) -> dict[str, float | None]:
    """Train/test loss, and restricted/excluded loss if the inputs are the group's full grid."""
    p = data.modulus
    logits_NC = final_logits(model, data.tokens).double()
    out: dict[str, float | None] = {
        "train_loss": F.cross_entropy(
            logits_NC[data.train_mask], data.labels[data.train_mask]
        ).item(),
        "test_loss": F.cross_entropy(
            logits_NC[~data.train_mask], data.labels[~data.train_mask]
        ).item(),
        "restricted_loss": None,
        "excluded_loss": None,
    }
    group = _analysis_group(data.op, p)
    answer_AB = _answer_grid(data, group)
    if answer_AB is not None:
        m = answer_AB.shape[0]
        restricted, excluded = restricted_and_excluded(
            logits_NC.view(m, m, p), key_freqs, answer_AB, group.order
        )
        out["restricted_loss"] = F.cross_entropy(restricted.reshape(m * m, p), data.labels).item()
        mask = data.train_mask
        out["excluded_loss"] = F.cross_entropy(
            excluded.reshape(m * m, p)[mask], data.labels[mask]
        ).item()
    return out


def _analysis_group(op: str, p: int) -> FourierGroup:
    """The task's ground-truth group; Z_p in residue order where it has none (div, or mul
    mod a composite), so such models still train and get their weight norms."""
    try:
        return task_group(op, p)
    except UserError:
        return task_group("add", p)


def _answer_grid(data: ModularDataset, group: FourierGroup) -> torch.Tensor | None:
    """The answer's group element on the row-major grid of the group's residues, if the
    dataset's inputs are exactly that grid (else None)."""
    members = torch.nonzero(group.log >= 0).flatten()
    m = members.numel()
    grid = torch.stack(torch.meshgrid(members, members, indexing="ij"), -1).reshape(-1, 2)
    if data.pairs.shape != grid.shape or not torch.equal(data.pairs, grid):
        return None
    return group.coordinates(grid)[group.answer].view(m, m)


def write_fourier_json(
    run_dir: Path, model: HookedTransformer, data: ModularDataset
) -> dict[str, Any]:
    """Analyse the final weights and every checkpoint; write and return fourier.json's dict."""
    result = weight_fourier(model, data.modulus, data.op)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows: dict[str, list[Any]] = {"step": []}
    for step in list_checkpoints(run_dir):
        model.load_state_dict(load_safetensors(checkpoint_file(run_dir, step)))
        rows["step"].append(step)
        for k, v in progress_measures(model, data, result["key_freqs"]).items():
            rows.setdefault(k, []).append(v)
    model.load_state_dict(state)
    result["progress"] = rows
    atomic_write_json(Path(run_dir) / "fourier.json", result)
    return result
