"""The report of a language-model study: the model it read, and its features in text.

A language-model store (``husai run`` with a ``language_model`` source) has no task, no
transformer of its own and no ground truth. Its report keeps the stability, verdict,
dynamics, guidelines and failures sections of the grokked-model report, replaces the model
section with what was read (model, layer, text, tokens), and in place of the ground truth
shows what stable and unstable latents look like in text:

For every hook and architecture, the configuration (width, sparsity) whose alive latents
have the highest mean per-feature stability (``latents.parquet``, :mod:`husai.experiments.latents`)
is shown through its lowest-seed SAE: its ``N_SHOWN`` most stable and ``N_SHOWN`` least
stable latents among those that fire on at least ``MIN_FIRINGS`` tokens, each with its
``N_SNIPPETS`` top-activating tokens in their text (the SAE re-encodes the stored
activations; the firing token is marked ``«...»``, ``⏎`` marks a line break).
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from husai import layout
from husai.activations import load_activations
from husai.errors import UserError
from husai.io import load_safetensors
from husai.lm.extract import load_token_strings
from husai.report.render import Note, Para, Section, Table, fmt, fmt_param
from husai.report.store import ActDir, RunView
from husai.saes.io import load_sae

N_SHOWN = 3
N_SNIPPETS = 4
MIN_FIRINGS = 5
LEFT, RIGHT = 12, 4
"""Tokens of context shown before and after the firing token."""
ENCODE_ROWS = 8192
PUBLISHED = (
    "Published cross-seed numbers on language models, for comparison (their metrics differ "
    "from ours in detail): about 30% of latents shared across seeds (Paulo & Belrose 2025, "
    "Llama-3-8B); PW-MCC about 0.80 for TopK (Song et al. 2025, Pythia-160M)."
)


def is_language_model(store: RunView) -> bool:
    """True when the store's activations come from a language model (``husai.lm.extract``)."""
    return bool(store.acts) and all(a.meta.get("source") == "language_model" for a in store.acts)


def describe_source(store: RunView) -> str:
    """``MiniLM layer 3 over 128,071 tokens of text`` for the title and the intro."""
    parts = []
    for a in store.acts:
        m = a.meta
        parts.append(
            f"{m.get('model')} layer {m.get('layer')} over {int(m.get('n_inputs', 0)):,} tokens"
        )
    return "; ".join(parts)


def source_intro(store: RunView) -> Para:
    return Para(
        f"Language model: {describe_source(store)} (no task and no ground truth: stability is judged "
        f"against the random baselines alone; loss recovered is not measured). {PUBLISHED}"
    )


def lm_model_section(store: RunView) -> Section:
    """Section 1: the model read and its activations, per activation directory."""
    sec = Section("1. The language model and its activations", "model")
    rows = []
    for a in store.acts:
        m = a.meta
        docs = m.get("documents") or []
        rows.append(
            [
                m.get("model"),
                m.get("model_loader"),
                m.get("hook"),
                m.get("d"),
                m.get("context"),
                f"{int(m.get('n_inputs', 0)):,}",
                m.get("n_windows"),
                len(docs),
                fmt(m.get("effective_rank")),
            ]
        )
    cols = [
        "model",
        "loader",
        "hook",
        "d",
        "context",
        "tokens",
        "windows",
        "documents",
        "effective rank",
    ]
    sec.add(
        Table(
            cols,
            rows,
            "From activations/**/meta.json (husai extract-lm). One row per text token; special "
            "tokens are not kept. Effective rank: participation ratio of the activation covariance.",
        )
    )
    about = _json(store, "model/language_model.json")
    if about:
        sec.add(
            Para(
                f"Model weights sha256 {str(about.get('model_sha256'))[:16]}..., "
                f"{about.get('n_layers')} blocks, d_model {about.get('d_model')}."
            )
        )
    return sec


def text_section(store: RunView) -> Section:
    """Section 5: the most and least stable latents with their top-activating text."""
    sec = Section("5. Features in text", "text")
    lat = _latents(store)
    if lat is None:
        return sec.add(Note("latents.parquet is missing, so no latent can be shown."))
    sec.add(
        Para(
            f"Per hook and architecture, the configuration whose alive latents have the highest "
            f"mean per-feature stability, through its lowest-seed SAE: its {N_SHOWN} most and "
            f"{N_SHOWN} least stable latents among those firing on >= {MIN_FIRINGS} tokens, each "
            f"with its {N_SNIPPETS} top-activating tokens in context (firing token in «...», "
            f"⏎ a line break). Stability: the share of the other seeds' SAEs holding a latent at "
            f"decoder cosine >= tau."
        )
    )
    for a in store.acts:
        sub = lat[(lat.hook == a.hook) & lat.alive.astype(bool)]
        if sub.empty:
            sec.add(Note(f"{a.hook}: no alive latent in latents.parquet."))
            continue
        text = _Text(a)
        for arch, grp in sub.groupby("arch", sort=True):
            sec.subsections.append(_arch_view(store, a.hook, str(arch), grp, text))
    return sec


def _arch_view(store: RunView, hook: str, arch: str, grp: Any, text: _Text) -> Section:
    sub = Section(f"{arch} @ {hook}", f"text-{arch}-{hook}".replace(".", "-"))
    means = grp.groupby(["d_sae", "sparsity"])["stability"].mean()
    d_sae, sparsity = max(means.index, key=lambda i: (means[i], i[0]))
    cfg = grp[(grp.d_sae == d_sae) & (grp.sparsity == sparsity)]
    sae_rows = cfg[cfg.seed == cfg.seed.min()]
    unit_id, sae_id = str(sae_rows.unit_id.iloc[0]), str(sae_rows.sae_id.iloc[0])
    firing = sae_rows[sae_rows.fire_freq * text.n_rows >= MIN_FIRINGS]
    name = str(sae_rows.sparsity_name.iloc[0])
    sub.add(
        Para(
            f"Configuration d_sae {d_sae}, {name} {fmt_param(sparsity)} (mean stability of its alive "
            f"latents {fmt(float(means[(d_sae, sparsity)]))}); SAE {sae_id}, {len(firing)} of "
            f"{len(sae_rows)} alive latents fire on >= {MIN_FIRINGS} tokens."
        )
    )
    if firing.empty:
        return sub.add(Note("no latent fires often enough to show."))
    most = firing.sort_values(["stability", "partner_cos_mean"], ascending=False).head(N_SHOWN)
    rest = firing.drop(most.index)
    least = rest.sort_values(["stability", "partner_cos_mean"]).head(N_SHOWN)
    chosen = list(most.itertuples()) + list(least.itertuples())
    sae = load_sae(store.sae_dir(unit_id, sae_id))
    top = text.top_rows(sae, [int(r.latent) for r in chosen], N_SNIPPETS)
    rows = []
    for kind, group in (("most stable", most), ("least stable", least)):
        for r in group.itertuples():
            about = [
                kind,
                int(r.latent),
                fmt(r.stability),
                fmt(r.partner_cos_mean),
                fmt(r.fire_freq),
            ]
            for value, row in top[int(r.latent)]:
                rows.append([*about, fmt(value), text.snippet(row)])
                about = [""] * len(about)  # the latent's columns once, on its first snippet
    cols = ["", "latent", "stability", "partner cos", "firing freq", "activation", "text"]
    return sub.add(Table(cols, rows, f"Top-activating tokens of {sae_id}."))


class _Text:
    """One activation directory's rows, with the text around each row."""

    def __init__(self, act: ActDir) -> None:
        self.acts = load_activations(act.path).acts
        inputs = load_safetensors(act.path / "inputs.safetensors")
        self.token_ids = inputs["token_ids"].numpy()
        self.document = inputs["window_document"][inputs["sequences"]].numpy()
        self.strings = load_token_strings(act.path)
        if self.strings is None:
            raise UserError(f"{act.path}: no tokens.json (extracted by an older husai)")
        self.n_rows = len(self.token_ids)

    def top_rows(self, sae: Any, latents: list[int], n: int) -> dict[int, list[tuple[float, int]]]:
        """Per latent, its ``n`` largest codes (value, row) over every row, largest first."""
        cols = torch.tensor(latents, dtype=torch.int64)
        best = torch.full((n, len(latents)), -math.inf)
        where = torch.zeros((n, len(latents)), dtype=torch.int64)
        for start in range(0, self.n_rows, ENCODE_ROWS):
            codes = sae.encode(self.acts[start : start + ENCODE_ROWS])[:, cols]
            rows = torch.arange(start, start + codes.shape[0]).expand(len(latents), -1).T
            vals = torch.cat([best, codes])
            idx = torch.cat([where, rows])
            best, pick = vals.topk(n, dim=0)
            where = idx.gather(0, pick)
        out = {}
        for j, latent in enumerate(latents):
            out[latent] = [
                (float(v), int(r)) for v, r in zip(best[:, j], where[:, j], strict=True) if v > 0
            ]
        return out

    def snippet(self, row: int) -> str:
        doc = self.document[row]
        lo, hi = max(0, row - LEFT), min(self.n_rows, row + RIGHT + 1)
        rows = [r for r in range(lo, hi) if self.document[r] == doc]
        tokens = [self.strings.get(int(self.token_ids[r]), "?") for r in rows]
        return join_tokens(tokens, rows.index(row), _joins(self.strings))


def join_tokens(tokens: list[str], mark: int, spaced: bool) -> str:
    """Tokens as text, token ``mark`` in «...», line breaks as ⏎. ``spaced``: the tokens carry
    their own spaces (byte-level BPE); else (WordPiece) words are joined by spaces and a
    ``##`` piece continues the word before it."""
    out = ""
    for i, token in enumerate(tokens):
        piece = token.replace("\n", "⏎")
        glue = ""
        if not spaced:
            glue = "" if (piece.startswith("##") and i > 0) or not out else " "
            piece = piece[2:] if piece.startswith("##") and len(piece) > 2 else piece
        out += glue + (f"«{piece}»" if i == mark else piece)
    return out


def _joins(strings: dict[int, str]) -> bool:
    """Whether decoded tokens carry their own spaces (byte-level BPE) or not (WordPiece)."""
    spaced = sum(s.startswith(" ") for s in strings.values())
    return spaced > 0.05 * max(1, len(strings))


def _latents(store: RunView) -> Any:
    import pandas as pd

    path = layout.table_path(store.root, layout.LATENTS)
    if not path.is_file():
        return None
    return pd.read_parquet(path)


def _json(store: RunView, rel: str) -> dict[str, Any] | None:
    path = store.root / rel
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def renumber(sections: list[Section]) -> list[Section]:
    """Number the sections 1, 2, ... in order (a language-model report has fewer)."""
    for i, sec in enumerate(sections, start=1):
        head, _, rest = sec.title.partition(". ")
        sec.title = f"{i}. {rest}" if head.isdigit() else sec.title
    return sections
