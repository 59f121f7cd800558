"""``husai extract-lm``: residual-stream activations of a language model over text.

The activations of every text token at ``blocks.L.hook_resid_post`` (the residual stream
after block L; :mod:`husai.lm.models`) are written as a HUSAI activation directory, so that
``load_activations``, ``husai train-saes``, ``trust`` and ``consensus`` read it unchanged::

    acts.safetensors    {"acts": float32 [R, D]}, one row per text token, in text order
    inputs.safetensors  "token_ids" [R], "sequences" [R] (window index), "positions" [R]
                        (index in the model's input, special tokens included),
                        "window_document" [W], "window_offset" [W] (int64);
                        "pairs" [R, 2] = (sequence, position) and "train_mask" [R] (all
                        true: no split) for the activation-directory format
    tokens.json         {"<id>": "<text>"}: every token id of the text, decoded alone (for
                        the report's top-activating text, without the model)
    meta.json           model, layer, hook, context, documents, token counts, job key, ...

How the text becomes windows and rows is :mod:`husai.lm.windows`. Extraction runs in
batches of windows of one length (no padding, so each row equals an unbatched forward
pass) and streams to disk in shards of about ``shard_tokens`` rows
(``shards/shard_00000.safetensors``, each written atomically and stamped with the job key),
so memory stays bounded by one shard and an interrupted run resumes at the first missing
shard. The shards are then joined into ``acts.safetensors`` (one buffer the size of the
result, what any reader of it needs too), ``meta.json`` is written last, and the shards are
removed. A directory whose ``meta.json`` carries the same job key (model weights, layer,
context, the text's digest) is reused without running the model.

Every check (model, layer, context, text) runs before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from husai.errors import UserError
from husai.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json
from husai.lm.models import LanguageModel, load_language_model
from husai.lm.text import check_sources, iter_documents
from husai.lm.windows import Window, WindowPlan, plan_windows
from husai.progress import progress_bar

log = logging.getLogger(__name__)

FORMAT = "husai-lm-activations/1"
TOKENS = "tokens.json"
SHARD_DIR = "shards"


def extract_lm(
    model: str,
    layer: int,
    text: list[str | Path],
    out: Path,
    *,
    max_tokens: int | None = None,
    context: int = 128,
    device: str = "cpu",
    batch_size: int = 32,
    shard_tokens: int = 32768,
    progress: bool = True,
) -> Path:
    """Extract ``model``'s residual stream after block ``layer`` over ``text`` into ``out``."""
    check_sources(text)  # a wrong path fails before the model loads
    lm = load_language_model(model, device)
    return extract_lm_from(
        lm,
        layer,
        text,
        out,
        max_tokens=max_tokens,
        context=context,
        batch_size=batch_size,
        shard_tokens=shard_tokens,
        progress=progress,
    )


def extract_lm_from(
    lm: LanguageModel,
    layer: int,
    text: list[str | Path],
    out: Path,
    *,
    max_tokens: int | None = None,
    context: int = 128,
    batch_size: int = 32,
    shard_tokens: int = 32768,
    progress: bool = True,
) -> Path:
    """:func:`extract_lm` for an already loaded model (e.g. a local ``HookedTransformer``)."""
    lm.check_layer(layer)
    plan = plan_windows(lm, iter_documents(text), context, max_tokens)
    job = _job_key(lm, layer, context, plan)
    out = Path(out)
    _check_not_other_activations(out)
    if _is_done(out, job):
        log.info("%s: up to date (job %s)", out, job[:12])
        return out
    (out / "meta.json").unlink(missing_ok=True)  # a stale directory stops being valid now
    shards = _shard_ranges(plan.windows, shard_tokens)
    done = [_shard_is_done(_shard_path(out, i), job, r) for i, r in enumerate(shards)]
    finished = sum(_rows(plan.windows[a:b]) for (a, b), ok in zip(shards, done, strict=True) if ok)
    with progress_bar("extract-lm", plan.n_rows, enabled=progress, completed=finished) as bar:
        for i, (a, b) in enumerate(shards):
            if done[i]:
                continue
            acts = _run_windows(lm, plan, plan.windows[a:b], layer, batch_size, bar)
            atomic_save_safetensors(
                _shard_path(out, i), {"acts": acts}, metadata={"job": job, "windows": f"{a}:{b}"}
            )
    stats = _join_shards(out, len(shards), plan.n_rows, lm.d_model)
    _write_inputs(out, plan)
    _write_token_strings(out, lm, plan)
    atomic_write_json(out / "meta.json", _meta(lm, layer, context, max_tokens, plan, job, stats))
    shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
    return out


def _job_key(lm: LanguageModel, layer: int, context: int, plan: WindowPlan) -> str:
    key = {
        "format": FORMAT,
        "model_sha256": lm.sha256,
        "source": lm.source,
        "layer": layer,
        "context": context,
        "text": plan.digest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _check_not_other_activations(out: Path) -> None:
    """A UserError if ``out`` holds activations that are not a language model's."""
    meta = out / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("format") != FORMAT:
        raise UserError(
            f"--out {out}: holds other activations (meta.json); choose another directory"
        )


def _is_done(out: Path, job: str) -> bool:
    meta = out / "meta.json"
    if not meta.is_file():
        return False
    written = all(
        (out / name).is_file() for name in ("acts.safetensors", "inputs.safetensors", TOKENS)
    )
    return written and json.loads(meta.read_text()).get("job") == job


def _rows(windows: list[Window]) -> int:
    return sum(w.keep for w in windows)


def _shard_ranges(windows: list[Window], shard_tokens: int) -> list[tuple[int, int]]:
    """Consecutive window ranges of about ``shard_tokens`` rows (at least one window each)."""
    ranges, start, rows = [], 0, 0
    for i, w in enumerate(windows):
        rows += w.keep
        if rows >= shard_tokens:
            ranges.append((start, i + 1))
            start, rows = i + 1, 0
    if start < len(windows):
        ranges.append((start, len(windows)))
    return ranges


def _shard_path(out: Path, index: int) -> Path:
    return out / SHARD_DIR / f"shard_{index:05d}.safetensors"


def _shard_is_done(path: Path, job: str, windows: tuple[int, int]) -> bool:
    """The shard exists, is readable and holds ``windows`` of this job."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            stamp = f.metadata() or {}
    except (SafetensorError, OSError):
        return False
    return stamp.get("job") == job and stamp.get("windows") == f"{windows[0]}:{windows[1]}"


def _run_windows(
    lm: LanguageModel,
    plan: WindowPlan,
    windows: list[Window],
    layer: int,
    batch_size: int,
    bar: Any,
) -> Float[Tensor, "r d"]:
    """Rows of ``windows`` in order; each batch holds windows of one length."""
    chunks: list[Tensor] = []
    start = len(plan.prefix)
    for batch in _same_length_batches(windows, batch_size):
        ids_BT = torch.stack([plan.model_input(w) for w in batch])
        acts_BTD = lm.residual(ids_BT, layer).cpu()
        chunks.extend(
            acts_TD[start : start + w.keep] for acts_TD, w in zip(acts_BTD, batch, strict=True)
        )
        bar.advance(sum(w.keep for w in batch))
    return torch.cat(chunks).contiguous()


def _same_length_batches(windows: list[Window], batch_size: int) -> list[list[Window]]:
    batches: list[list[Window]] = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and len(batches[-1][0].ids) == len(w.ids):
            batches[-1].append(w)
        else:
            batches.append([w])
    return batches


def _join_shards(out: Path, n_shards: int, n_rows: int, d: int) -> dict[str, float]:
    """Write ``acts.safetensors`` from the shards; return summary statistics of the rows."""
    from safetensors.torch import load_file

    header = {"acts": {"dtype": "F32", "shape": [n_rows, d], "data_offsets": [0, n_rows * d * 4]}}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # safetensors aligns the data to 8 bytes
    buf = bytearray(8 + len(head) + n_rows * d * 4)
    buf[:8] = len(head).to_bytes(8, "little")
    buf[8 : 8 + len(head)] = head
    pos = 8 + len(head)
    moments = _Moments(d)
    for i in range(n_shards):
        acts = load_file(str(_shard_path(out, i)))["acts"]
        moments.add(acts)
        data = acts.numpy().astype("<f4", copy=False).tobytes()
        buf[pos : pos + len(data)] = data
        pos += len(data)
    if pos != len(buf):
        raise RuntimeError(f"{out}: shards hold {pos} bytes of a {len(buf)}-byte file")
    atomic_write_bytes(out / "acts.safetensors", memoryview(buf))
    return moments.summary()


class _Moments:
    """Streaming mean and covariance of the rows, for the meta's summary."""

    def __init__(self, d: int) -> None:
        self.n, self.sum_D, self.sum_DD = (
            0,
            torch.zeros(d, dtype=torch.float64),
            torch.zeros(d, d, dtype=torch.float64),
        )
        self.norm_sum = 0.0

    def add(self, acts_RD: Tensor) -> None:
        x = acts_RD.double()
        self.n += x.shape[0]
        self.sum_D += x.sum(0)
        self.sum_DD += x.T @ x
        self.norm_sum += float(x.norm(dim=1).sum())

    def summary(self) -> dict[str, float]:
        mean_D = self.sum_D / self.n
        cov_DD = self.sum_DD / self.n - torch.outer(mean_D, mean_D)
        # participation ratio (sum lambda)^2 / sum lambda^2 = tr(C)^2 / ||C||_F^2
        rank = float(torch.trace(cov_DD) ** 2 / cov_DD.pow(2).sum())
        return {
            "effective_rank": rank,
            "mean_norm": self.norm_sum / self.n,
            "mean_vector_norm": float(mean_D.norm()),
        }


def _write_inputs(out: Path, plan: WindowPlan) -> None:
    rows = plan.row_tensors()
    tensors = {
        **rows,
        **plan.window_tensors(),
        "pairs": torch.stack([rows["sequences"], rows["positions"]], dim=1),
        "train_mask": torch.ones(plan.n_rows, dtype=torch.bool),
    }
    atomic_save_safetensors(out / "inputs.safetensors", tensors)


def _write_token_strings(out: Path, lm: LanguageModel, plan: WindowPlan) -> None:
    ids = sorted({int(i) for i in plan.row_tensors()["token_ids"].unique().tolist()})
    strings = {str(i): lm.tokenizer.decode([i]) for i in ids}
    atomic_write_json(out / TOKENS, strings)


def load_token_strings(acts_dir: Path) -> dict[int, str] | None:
    """Token id -> its text, as written by extraction (None if the directory has none)."""
    path = Path(acts_dir) / TOKENS
    if not path.is_file():
        return None
    return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}


def _meta(
    lm: LanguageModel,
    layer: int,
    context: int,
    max_tokens: int | None,
    plan: WindowPlan,
    job: str,
    stats: dict[str, float],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "source": "language_model",
        "model": lm.name,
        "model_loader": lm.source,
        "model_sha256": lm.sha256,
        "n_layers": lm.n_layers,
        "layer": layer,
        "hook": lm.hook(layer),
        "checkpoint": None,
        "context": context,
        "max_tokens": max_tokens,
        "special_prefix": plan.prefix,
        "special_suffix": plan.suffix,
        "d": lm.d_model,
        "n_inputs": plan.n_rows,
        "n_windows": len(plan.windows),
        "documents": plan.documents,
        "input_order": "text order: document, window, position",
        "pairs": "(sequence, position) of each row; train_mask is all true (no split)",
        "text_sha256": plan.digest(),
        "job": job,
        **stats,
    }
