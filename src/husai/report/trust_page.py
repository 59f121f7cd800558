"""``husai trust``: per-latent trust of SAE directories, as tables and one self-contained page.

:func:`trust_report` reads two or more SAE directories (SAELens format from any source,
HUSAI's included; checked as ``husai analyze`` checks them: distinct, finite, ``cfg.json``
agreeing with the weights, one ``d_in``), optionally activations, computes
:func:`husai.metrics.trust.trust_table` and writes under ``out``:

- ``trust.parquet`` and ``trust.csv``: one row per latent (schema:
  :meth:`~husai.metrics.trust.TrustTable.columns`, plus ``plane`` and ``plane_purity``
  when the activations are a HUSAI directory with Fourier planes: the latent's purest
  key-frequency plane and its share of the decoder norm^2 in it);
- ``trust.html``: the summary beside its random baselines, a stability histogram (inline
  PNG), the SAEs, with planes a per-plane view (:func:`plane_rows`), and a table sortable by any column (inline JS over inline JSON; it shows
  the first rows of the current order, the full table is in the CSV). No external URL.

Activations are a HUSAI activation directory (``meta.json`` + ``acts.safetensors``) or a
``.safetensors`` (tensor ``acts`` or its only tensor), ``.npy`` or ``.pt`` file holding a
tensor ``[..., d_in]`` (leading dimensions are flattened into rows). Everything is read
and checked, and every file rendered, before the first one is written (atomically), so a
bad input leaves nothing behind.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch
from torch import Tensor

from husai.activations import load_activations
from husai.errors import UserError
from husai.io import atomic_write_bytes, atomic_write_text, load_safetensors
from husai.metrics.analyze import load_sae_dirs
from husai.metrics.baselines import MetricValue
from husai.metrics.ground_truth import latent_purity
from husai.metrics.trust import (
    UNSTABLE_BELOW,
    TrustTable,
    check_tau,
    random_stability,
    trust_summary,
    trust_table,
)
from husai.report.figures import DPI, to_png
from husai.report.render import fmt

FILES = ("trust.parquet", "trust.csv", "trust.html")
PAGE_COLUMNS = (
    "sae_index",
    "latent",
    "stability",
    "best_cos",
    "subspace_share",
    "fire_freq",
    "partner_corr",
    "plane",
    "plane_purity",
)
PAGE_ROWS = 500


def trust_report(
    sae_dirs: list[Path],
    out: Path,
    *,
    activations: Path | None = None,
    tau: float = 0.7,
    subspace_rank: int | None = None,
) -> str:
    """Compute the per-latent trust table; write trust.{parquet,csv,html}; return the summary."""
    check_tau(tau)
    if subspace_rank is not None and subspace_rank < 1:
        raise UserError(f"--subspace-rank: expected an integer >= 1, got {subspace_rank}")
    dirs, saes = load_sae_dirs(sae_dirs, command="trust")
    acts = planes = None
    if activations is not None:
        acts, planes = load_activation_matrix(Path(activations), saes[0].d_in)
    table = trust_table(
        saes, tau=tau, subspace_rank=subspace_rank, acts=acts, names=[str(d) for d in dirs]
    )
    cols = table.columns()
    if planes is not None:
        cols |= plane_columns(table, saes, planes)
    summary = trust_summary(table)
    text = summary_text(table, summary)
    import pandas as pd

    frame = pd.DataFrame(cols)
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    page = trust_html(table, cols, text)
    out = Path(out)
    atomic_write_bytes(out / FILES[0], parquet.getvalue())
    atomic_write_text(out / FILES[1], frame.to_csv(index=False))
    atomic_write_text(out / FILES[2], page)
    return text


def load_activation_matrix(path: Path, d_in: int) -> tuple[Tensor, Any]:
    """Activations ``[R, d_in]`` (float32) and, for a HUSAI directory, its Fourier planes."""
    planes = None
    if path.is_dir() and (path / "meta.json").is_file():
        loaded = load_activations(path)
        acts, planes = loaded.acts, loaded.planes
        path = path / "acts.safetensors"
    elif path.is_dir():
        path = path / "acts.safetensors"
        acts = _read_tensor(path)
    else:
        acts = _read_tensor(path)
    if acts.ndim < 2:
        raise UserError(
            f"{path}: activations: expected a tensor [n, d_in], got shape {tuple(acts.shape)}"
        )
    if acts.shape[-1] != d_in:
        raise UserError(
            f"{path}: activations have width {acts.shape[-1]}, the SAEs read d_in {d_in}"
        )
    acts = acts.reshape(-1, d_in).float()
    if acts.shape[0] < 2 or not bool(torch.isfinite(acts).all()):
        raise UserError(f"{path}: activations: expected at least 2 rows of finite values")
    return acts, planes


def _read_tensor(path: Path) -> Tensor:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"{path}: activations not found (a HUSAI activation directory or a file)")
    if suffix == ".safetensors":
        return _only_tensor(path, load_safetensors(path))
    try:
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            return obj if isinstance(obj, Tensor) else _only_tensor(path, obj)
    except (ValueError, OSError, RuntimeError, TypeError, EOFError, UnpicklingError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"{path}: not a readable tensor file ({why})") from None
    raise UserError(f"{path}: activations: expected a .safetensors, .npy or .pt file")


def _only_tensor(path: Path, obj: Any) -> Tensor:
    tensors = obj if isinstance(obj, dict) else {}
    if "acts" in tensors or len(tensors) == 1:
        t = tensors.get("acts", next(iter(tensors.values())))
        if isinstance(t, Tensor):
            return t
    raise UserError(f"{path}: expected a tensor 'acts' or a single tensor, got {sorted(tensors)}")


def plane_columns(table: TrustTable, saes: list[Any], planes: Any) -> dict[str, np.ndarray]:
    """Each latent's purest key-frequency plane (e.g. 'a+b k=14') and its norm^2 share."""
    key = planes.key_only()
    var = key.variable or ["?"] * len(key.freq)
    labels = np.array([f"{v} k={int(f)}" for v, f in zip(var, key.freq, strict=True)] + [""])
    plane, purity = [], []
    for sae in saes:
        pur = latent_purity(sae.W_dec, key)
        plane.append(labels[pur["plane"]])  # -1 (no plane) picks ""
        purity.append(pur["plane_purity"])
    return {"plane": np.concatenate(plane), "plane_purity": np.concatenate(purity)}


def plane_rows(cols: dict[str, np.ndarray], n_saes: int, min_purity: float = 0.5) -> list[list]:
    """Per key plane: its latents (purity >= ``min_purity``) per SAE, their mean stability.

    One row per plane that holds a latent, strongest-held first: the latents per SAE as
    min-max over the SAEs (the allocation agreement: equal counts mean every seed gave
    the plane as many latents), their total and their mean stability.
    """
    held = cols["plane_purity"] >= min_purity
    rows = []
    for plane in sorted({str(p) for p in cols["plane"][held] if p}):
        mine = held & (cols["plane"] == plane)
        per_sae = np.bincount(cols["sae_index"][mine], minlength=n_saes)
        rows.append(
            [
                plane,
                f"{per_sae.min()}-{per_sae.max()}",
                int(mine.sum()),
                float(cols["stability"][mine].mean()),
            ]
        )
    return sorted(rows, key=lambda r: -r[2])


def summary_text(table: TrustTable, summary: dict[str, MetricValue]) -> str:
    """The terminal summary: headline numbers beside their baselines, then one line per SAE."""
    n = len(table.names)
    lines = [
        f"trust over {n} SAEs ({len(table.stability):,} latents, d_in {table.d_in}, tau {table.tau:g})",
        f"{'':<36} {'value':>8} {'random':>8}  baseline (the hardest present)",
    ]
    labels = {
        "mean_stability": "mean stability",
        "stable_in_all": f"stable in all {n - 1} other SAE(s)",
        "stable_in_any": "partner in >= 1 other SAE",
        "subspace_share_unstable": f"subspace share, unstable (< {UNSTABLE_BELOW:g})",
    }
    for key, label in labels.items():
        mv = summary[key]
        kind = _kind(table, mv, subspace=key.startswith("subspace"))
        lines.append(f"{label:<36} {fmt(mv.value, 4):>8} {fmt(mv.baseline_hardest, 4):>8}  {kind}")
    for i, name in enumerate(table.names):
        rows = table.sae == i
        stab = table.stability[rows]
        lines.append(
            f"[{i}] {name}: {int(rows.sum()):,} latents, stable in all {fmt((stab >= 1).mean())}, "
            f"mean stability {fmt(stab.mean())}, subspace rank {int(table.subspace_rank[rows][0])}"
        )
    return "\n".join(lines)


def _kind(table: TrustTable, mv: MetricValue, subspace: bool) -> str:
    """Which random baseline the summary line shows: the data subspace's when it is the hardest."""
    if table.data_rank and mv.baseline_subspace == mv.baseline_hardest:
        what = "a random unit vector" if subspace else "random decoders"
        sphere = "exact; r / d_in" if subspace else "analytic; unit sphere"
        return (
            f"{what} inside the activations' rank-{table.data_rank} principal subspace "
            f"({sphere} {fmt(mv.baseline, 4)})"
        )
    return "r / d_in (exact)" if subspace else "random unit decoders (analytic)"


def stability_figure(table: TrustTable) -> bytes:
    """Share of latents at each stability level, beside random unit decoders (analytic)."""
    from matplotlib.figure import Figure

    n = len(table.names)
    levels = np.arange(n) / (n - 1)
    observed = np.bincount(np.rint(table.stability * (n - 1)).astype(int), minlength=n) / len(
        table.stability
    )
    base = random_stability(table.sizes, table.d_in, table.tau)
    fig = Figure(figsize=(6.5, 3.2), dpi=DPI)
    ax = fig.subplots()
    width = 0.35 / max(1, n - 1)
    ax.bar(levels - width / 2, observed, width, label="these SAEs")
    ax.bar(levels + width / 2, base, width, label="random unit decoders", color="0.6")
    ax.set(xlabel=f"stability (share of the other SAEs with a partner at cos >= {table.tau:g})")
    ax.set(ylabel="share of latents", xticks=levels)
    ax.legend(frameon=False)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.18, top=0.95)
    return to_png(fig)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}"
    "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f0f0f0}"
    "#head th{cursor:pointer}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"
)
_JS = """
const D=JSON.parse(document.getElementById('data').textContent);let key=2,asc=false;
const cmp=(x,y)=>{const a=x[key],b=y[key];if(a===b)return 0;if(a===null)return 1;
if(b===null)return -1;return (a<b?-1:1)*(asc?1:-1);};
function draw(){const lim=+document.getElementById('lim').value||500;
const r=D.rows.slice().sort(cmp);
document.getElementById('head').innerHTML=D.cols.map((c,i)=>'<th data-i="'+i+'">'+c+
(i===key?(asc?' &#9650;':' &#9660;'):'')+'</th>').join('');
document.getElementById('body').innerHTML=r.slice(0,lim).map(x=>'<tr>'+x.map(v=>
'<td>'+(v===null?'n/a':v)+'</td>').join('')+'</tr>').join('');
document.getElementById('count').textContent='showing '+Math.min(lim,r.length)+' of '+
r.length+' latents, sorted by '+D.cols[key]+(asc?' (ascending)':' (descending)');}
document.getElementById('head').onclick=e=>{const i=+e.target.dataset.i;if(isNaN(i))return;
asc=(i===key)?!asc:false;key=i;draw();};
document.getElementById('lim').onchange=draw;draw();
"""


def trust_html(table: TrustTable, cols: dict[str, np.ndarray], text: str) -> str:
    """The self-contained page (module docstring); ``text`` is the terminal summary."""
    e = html.escape
    shown = [c for c in PAGE_COLUMNS if c in cols]
    rows = [list(r) for r in zip(*(_json_column(cols[c]) for c in shown), strict=True)]
    data = json.dumps({"cols": shown, "rows": rows}, separators=(",", ":")).replace("</", "<\\/")
    saes = "".join(f"<tr><td>{i}</td><td>{e(n)}</td></tr>" for i, n in enumerate(table.names))
    png = base64.b64encode(stability_figure(table)).decode()
    return "\n".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            f"<title>husai trust</title><style>{_CSS}</style></head><body>",
            "<h1>Which latents can I trust?</h1>",
            f"<p>{e(_DEFINITIONS.format(tau=table.tau))}</p>",
            f"<pre>{e(text)}</pre>",
            f'<figure><img alt="stability histogram" src="data:image/png;base64,{png}"></figure>',
            f"<h2>SAEs</h2><table><tr><th>sae_index</th><th>path</th></tr>{saes}</table>",
            _plane_html(cols, len(table.names)),
            "<h2>Latents</h2><p>Click a column to sort. Rows shown: "
            f'<input id="lim" type="number" value="{PAGE_ROWS}" min="1">. '
            '<span id="count"></span> Every column of every latent is in trust.csv.</p>',
            "<noscript><p>The table needs JavaScript; it is all in trust.csv.</p></noscript>",
            '<table><thead id="head"></thead><tbody id="body"></tbody></table>',
            f'<script type="application/json" id="data">{data}</script>',
            f"<script>{_JS}</script></body></html>",
        ]
    )


def _plane_html(cols: dict[str, np.ndarray], n_saes: int) -> str:
    """The per-plane view (ground-truth planes only): empty without a plane column."""
    if "plane" not in cols:
        return ""
    rows = plane_rows(cols, n_saes)
    body = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{span}</td><td>{n}</td><td>{fmt(st)}</td></tr>"
        for p, span, n, st in rows
    )
    return (
        "<h2>By ground-truth plane</h2><p>Latents with >= 50% of their decoder norm^2 in one "
        "key-frequency plane, per plane: how many each SAE gave it (min-max over the SAEs), "
        "in all, and their mean stability. Latents in no plane are left out.</p>"
        "<table><tr><th>plane</th><th>latents per SAE</th><th>latents</th>"
        f"<th>mean stability</th></tr>{body}</table>"
    )


_DEFINITIONS = (
    "stability: the share of the other SAEs holding a latent whose decoder cosine with this "
    "one is >= {tau:g}; best_cos: the largest such cosine. subspace_share: the share of the "
    "latent's decoder norm^2 inside the top-r principal directions of the other SAEs' unstable "
    "latents (stability < 1/2); a random direction scores r / d_in. fire_freq and "
    "partner_corr (with activations): how often the latent fires, and the mean Pearson "
    "correlation of its codes with its best partner's in each other SAE. Random baselines "
    "assume decoder rows that are independent uniformly random unit vectors."
)


def _json_column(x: np.ndarray) -> list[Any]:
    """Plain JSON values: strings, integers, floats to 4 decimals, NaN as null."""
    x = np.asarray(x)
    if x.dtype.kind in "biu":
        return x.astype(np.int64).tolist()
    if x.dtype.kind != "f":
        return [str(v) for v in x]
    out = np.round(x, 4).astype(object)
    out[np.isnan(x)] = None
    return out.tolist()
