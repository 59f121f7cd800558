"""Matplotlib figures for the report, each returned as PNG bytes.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no
pyplot global state, no display needed) and saved at a modest DPI so that ~30
figures embed in one page quickly. Every function takes plain arrays or a small
DataFrame already filtered by the caller, and plots only what it is given: a
missing value is left out of the plot, never interpolated.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DPI = 80
STABILITY_METRICS = ("pw_mcc", "pw_mcc_alive", "shared_fraction", "activation_mcc")
METRIC_LABEL = {
    "pw_mcc": "PW-MCC (Song et al., all latents)",
    "pw_mcc_alive": "PW-MCC, alive latents only",
    "shared_fraction": "shared fraction",
    "activation_mcc": "activation MCC",
}


def _figure(
    w: float,
    h: float,
    nrows: int = 1,
    ncols: int = 1,
    *,
    top: float = 0.5,
    left: float = 0.75,
    bottom: float = 0.6,
    hspace: float = 0.55,
    **kw: Any,
):
    """A figure with fixed margins in inches (no layout engine: ~2x faster to save)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    fig.subplots_adjust(
        left=left / w,
        right=1 - 0.25 / w,
        bottom=bottom / h,
        top=1 - top / h,
        hspace=hspace,
        wspace=0.3,
    )
    return fig, axes


def to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def grokking_curves(curves: dict[str, Sequence[float]]) -> bytes:
    """Train/test loss and accuracy against step on a log axis (step 0 cannot be shown)."""
    fig, ax = _figure(10, 3.6, 1, 2)
    step = np.asarray(curves["step"], dtype=float)
    keep = step > 0
    for key, axis, style in [
        ("train_loss", ax[0, 0], "-"),
        ("test_loss", ax[0, 0], "--"),
        ("train_acc", ax[0, 1], "-"),
        ("test_acc", ax[0, 1], "--"),
    ]:
        if key in curves and len(curves[key]) == len(step):
            axis.plot(step[keep], np.asarray(curves[key], dtype=float)[keep], style, label=key)
    ax[0, 0].set(xscale="log", yscale="log", xlabel="training step", ylabel="loss")
    ax[0, 1].set(xscale="log", xlabel="training step", ylabel="accuracy", ylim=(-0.02, 1.02))
    for a in ax[0]:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    return to_png(fig)


def fourier_spectrum(we_norms: Sequence[float], key_freqs: Sequence[int], label: str) -> bytes:
    fig, ax = _figure(10, 3.0)
    a = ax[0, 0]
    norms = np.asarray(we_norms, dtype=float)
    freqs = np.arange(len(norms))
    colors = ["tab:red" if f in set(key_freqs) else "tab:gray" for f in freqs]
    a.bar(freqs, norms, color=colors)
    a.set(
        xlabel="frequency k", ylabel=f"{label} norm", title=f"{label} Fourier spectrum (red: key)"
    )
    a.grid(alpha=0.3, axis="y")
    return to_png(fig)


def progress_losses(progress: dict[str, Sequence[float]]) -> bytes:
    fig, ax = _figure(10, 3.4)
    a = ax[0, 0]
    step = np.asarray(progress["step"], dtype=float)
    for key in ("restricted_loss", "excluded_loss", "train_loss", "test_loss"):
        vals = progress.get(key)
        if vals is not None and len(vals) == len(step):
            v = np.asarray(vals, dtype=float)
            ok = (step > 0) & (v > 0)
            a.plot(step[ok], v[ok], marker=".", label=key)
    a.set(xscale="log", yscale="log", xlabel="checkpoint step", ylabel="loss")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    return to_png(fig)


def plane_r2(panels: list[tuple[str, Any]]) -> bytes:
    """Per hook, variance share per frequency, stacked by plane variable; key freqs in red."""
    fig, ax = _figure(10, 2.9 * len(panels), len(panels), 1, hspace=0.7)
    for a, (hook, planes) in zip(ax[:, 0], panels, strict=True):
        freq_P, r2_P = planes.freq.tolist(), planes.known_r2().tolist()
        freqs = sorted(set(freq_P))
        variables = list(dict.fromkeys(planes.variable))
        bottom = np.zeros(len(freqs))
        for var, color in zip(variables, _colors(len(variables)), strict=True):
            h = np.zeros(len(freqs))
            for f, v, r in zip(freq_P, planes.variable, r2_P, strict=True):
                if v == var:
                    h[freqs.index(int(f))] += r
            a.bar(freqs, h, bottom=bottom, color=color, label=var or "plane")
            bottom += h
        key = set(planes.key_freqs)
        step = max(1, len(freqs) // 40)
        a.set_xticks(freqs[::step], [str(f) for f in freqs[::step]], fontsize=7)
        for lab in a.get_xticklabels():
            lab.set_color("tab:red" if int(lab.get_text()) in key else "black")
        a.set(
            xlabel="frequency k", ylabel="variance share", title=f"{hook}: variance per frequency"
        )
        a.legend(fontsize=7)
    return to_png(fig)


def stability_grid(summary: Any, pairs: Any, title: str) -> bytes:
    """Rows: metrics; left column vs sparsity (a line per width), right vs width.

    ``summary`` rows of one (arch, hook, checkpoint); error bars are [ci_lo, ci_hi];
    the shaded band spans the per-pair random baselines of each point (or the
    group's baseline when no pairs table), the dotted line is their mean and the
    dash-dot line the untrained-init value. A column whose x has one value is dropped.
    """
    metrics = [m for m in STABILITY_METRICS if (summary.metric == m).any()]
    xs = [
        (x, by)
        for x, by in (("sparsity", "d_sae"), ("d_sae", "sparsity"))
        if summary[x].nunique() > 1
    ]
    xs = xs or [("sparsity", "d_sae")]
    fig, ax = _figure(
        max(7.0, 5.0 * len(xs)), 2.5 * len(metrics) + 0.4, len(metrics), len(xs), top=0.8
    )
    fig.suptitle(title)
    sname = str(summary.sparsity_name.iloc[0])
    for row, metric in zip(ax, metrics, strict=True):
        sub = summary[summary.metric == metric]
        band = _baseline_band(sub, pairs, metric)
        for a, (x, by) in zip(row, xs, strict=True):
            _lines(a, sub, band, x=x, by=by, by_label="width" if by == "d_sae" else sname)
            a.set(xlabel=sname if x == "sparsity" else "width d_sae")
        row[0].set(ylabel=METRIC_LABEL[metric])
    for a in ax[0]:
        a.legend(fontsize=7)
    return to_png(fig)


def _baseline_band(sub: Any, pairs: Any, metric: str) -> dict:
    out = {}
    for gid, grp in sub.groupby("group_id"):
        b = float(grp.baseline.iloc[0])
        lo = hi = b
        if pairs is not None and {"group_id", "metric", "baseline"} <= set(pairs.columns):
            pb = pairs[(pairs.group_id == gid) & (pairs.metric == metric)].baseline.dropna()
            if len(pb):
                lo, hi = float(pb.min()), float(pb.max())
        out[gid] = (lo, hi)
    return out


def _lines(a: Any, sub: Any, band: dict, x: str, by: str, by_label: str) -> None:
    for color, (val, grp) in zip(_colors(sub[by].nunique()), sub.groupby(by), strict=True):
        grp = grp.sort_values(x)
        xs = grp[x].to_numpy(dtype=float)
        mean = grp["mean"].to_numpy(dtype=float)
        err = None
        if {"ci_lo", "ci_hi"} <= set(grp.columns):
            lo, hi = grp.ci_lo.to_numpy(dtype=float), grp.ci_hi.to_numpy(dtype=float)
            err = np.nan_to_num(np.vstack([mean - lo, hi - mean]).clip(min=0))
        a.errorbar(
            xs,
            mean,
            yerr=err,
            color=color,
            marker="o",
            ms=3,
            capsize=2,
            label=f"{by_label}={val:g}",
        )
        bl = np.array([band[g] for g in grp.group_id])
        a.fill_between(xs, bl[:, 0], bl[:, 1], color=color, alpha=0.15, lw=0)
        a.plot(xs, grp.baseline.to_numpy(dtype=float), ":", color=color, lw=1)
        if "baseline_hardest" in grp and grp.baseline_hardest.notna().any():
            a.plot(xs, grp.baseline_hardest.to_numpy(dtype=float), "--", color=color, lw=0.9)
        if "baseline_init" in grp and grp.baseline_init.notna().any():
            a.plot(
                xs, grp.baseline_init.to_numpy(dtype=float), "-.", color=color, lw=0.8, alpha=0.6
            )
    if len(sub) and (sub[x] > 0).all() and sub[x].max() / max(sub[x].min(), 1e-30) >= 4:
        a.set_xscale("log")
    vals = sorted(sub[x].unique())
    if len(vals) <= 12:
        a.set_xticks(vals, [f"{v:g}" for v in vals])
        a.minorticks_off()
    a.grid(alpha=0.3)


def goldilocks(
    panels: list[tuple[str, Any, Any, Any, Any]], metric_label: str, ev_level: float
) -> bytes:
    """Heatmaps of excess over baseline, one per arch: (title, widths, sparsities, excess[W,S], ev[W,S]).

    Each cell is annotated with its excess and explained variance; contours of EV are
    drawn where the grid is at least 2x2, with the ``ev_level`` threshold in bold.
    """
    n = len(panels)
    fig, ax = _figure(min(4.6 * n, 16), 3.8, 1, n, left=0.8)
    vmax = max(float(np.nanmax(np.abs(p[3]))) if np.isfinite(p[3]).any() else 0.1 for p in panels)
    for a, (title, widths, sps, exc, ev) in zip(ax[0], panels, strict=True):
        im = a.imshow(exc, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        a.set_xticks(range(len(sps)), [f"{s:g}" for s in sps], fontsize=8)
        a.set_yticks(range(len(widths)), [str(int(w)) for w in widths], fontsize=8)
        a.set(xlabel="sparsity", ylabel="width d_sae", title=title)
        for (i, j), v in np.ndenumerate(exc):
            if np.isfinite(v):
                color = "white" if abs(v) > 0.6 * vmax else "black"
                text = f"{v:+.2f}\nEV {ev[i, j]:.2f}"
                a.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
        if ev.shape[0] >= 2 and ev.shape[1] >= 2 and np.isfinite(ev).all() and np.ptp(ev) > 0:
            cs = a.contour(ev, levels=6, colors="k", linewidths=0.6, alpha=0.5)
            a.clabel(cs, fontsize=6, fmt="%.2f")
            if ev.min() < ev_level < ev.max():
                a.contour(ev, levels=[ev_level], colors="k", linewidths=2)
    fig.colorbar(im, ax=ax[0, -1], label=f"{metric_label} minus baseline")
    return to_png(fig)


def pareto(points: Any, frontier_ids: set, st: float, ev: float) -> bytes:
    """Stability (y) against explained variance (x), per (hook, checkpoint).

    Colour: architecture; marker: (hook, checkpoint). Each (hook, checkpoint) has its own
    Pareto frontier, drawn as a black line in its own style and named in the legend.
    """
    fig, ax = _figure(9, 5.5)
    a = ax[0, 0]
    settings = sorted(
        {(str(h), str(c)) for h, c in zip(points.hook, points.checkpoint, strict=True)}
    )
    markers = dict(zip(settings, "osD^vP*X<>", strict=False))
    styles = dict(zip(settings, ["-", "--", ":", "-."] * 3, strict=False))
    for color, (arch, grp) in zip(
        _colors(points.arch.nunique()), points.groupby("arch"), strict=True
    ):
        for (hook, ckpt), g in grp.groupby(["hook", "checkpoint"]):
            a.scatter(
                g.explained_variance_mean,
                g["mean"],
                color=color,
                marker=markers.get((str(hook), str(ckpt)), "o"),
                label=f"{arch} / {hook} [{ckpt}]",
                s=25,
            )
    front = points[points.group_id.isin(frontier_ids)]
    for (hook, ckpt), f in front.groupby(["hook", "checkpoint"]):
        f = f.sort_values("explained_variance_mean")
        style = styles.get((str(hook), str(ckpt)), "-")
        label = f"Pareto frontier, {hook} [{ckpt}]"
        a.plot(f.explained_variance_mean, f["mean"], color="k", ls=style, lw=0.9, label=label)
    a.scatter(front.explained_variance_mean, front["mean"], s=90, facecolors="none", edgecolors="k")
    a.axhline(st, color="tab:green", ls="--", lw=1)
    a.axvline(ev, color="tab:green", ls="--", lw=1)
    a.set(
        xlabel="explained variance (mean over seeds)", ylabel="alive-only PW-MCC (mean over pairs)"
    )
    a.grid(alpha=0.3)
    a.legend(fontsize=6, loc="best")
    return to_png(fig)


def stability_vs_l0(df: Any) -> bytes:
    """Primary stability against measured L0 for every architecture (a line per arch and width)."""
    fig, ax = _figure(9, 4.2)
    a = ax[0, 0]
    keys = list(df.groupby(["arch", "d_sae"]).groups)
    for color, (arch, width) in zip(_colors(len(keys)), keys, strict=True):
        g = df[(df.arch == arch) & (df.d_sae == width)].sort_values("l0_mean")
        err = np.nan_to_num(np.vstack([g["mean"] - g.ci_lo, g.ci_hi - g["mean"]]).clip(min=0))
        a.errorbar(
            g.l0_mean,
            g["mean"],
            yerr=err,
            marker="o",
            ms=3,
            capsize=2,
            color=color,
            label=f"{arch} w={int(width)}",
        )
        base = g.baseline_hardest if "baseline_hardest" in g else g.baseline
        a.scatter(g.l0_mean, base, marker="x", color=color, s=20)
    if (df.l0_mean > 0).all() and df.l0_mean.max() >= 10 * df.l0_mean.min():
        from matplotlib.ticker import FuncFormatter

        a.set_xscale("log")
        a.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        a.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    a.set(xlabel="mean L0 (active latents per input)", ylabel="alive-only PW-MCC")
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
    return to_png(fig)


def per_config_bars(df: Any, cols: list[tuple[str, str]], title: str) -> bytes:
    """Grouped bars per configuration label: cols are (value column, baseline column)."""
    fig, ax = _figure(10, 0.5 + 0.22 * len(df) * len(cols) + 1.2, left=3.6)
    a = ax[0, 0]
    y = np.arange(len(df))
    h = 0.8 / len(cols)
    for i, ((vcol, bcol), color) in enumerate(zip(cols, _colors(len(cols)), strict=True)):
        a.barh(y + i * h, df[vcol], height=h, color=color, label=vcol)
        if bcol in df:
            a.scatter(df[bcol], y + i * h, marker="|", color="k", s=60)
    a.set_yticks(y + h * (len(cols) - 1) / 2, df["label"], fontsize=7)
    a.set(title=f"{title} (black ticks: hardest random baselines)", xlim=(0, 1.05))
    a.invert_yaxis()
    a.legend(fontsize=8)
    return to_png(fig)


def plane_angles(
    panels: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]], title: str
) -> bytes:
    """Polar panels, one per plane: each seed's latents at radius = seed index + 1.

    ``panels`` are (plane label, [(seed label, angles, in-plane norms)]); marker area
    grows with the latent's in-plane norm.
    """
    n = len(panels)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, ax = _figure(
        3.2 * ncols,
        3.3 * nrows + 0.6,
        nrows,
        ncols,
        top=0.9,
        left=0.4,
        bottom=0.7,
        subplot_kw={"projection": "polar"},
    )
    fig.suptitle(title)
    for idx, a in enumerate(ax.flat):
        if idx >= n:
            a.set_visible(False)
            continue
        label, seeds = panels[idx]
        for r, ((seed, ang, norm), color) in enumerate(
            zip(seeds, _colors(len(seeds)), strict=True)
        ):
            a.scatter(ang, np.full(len(ang), r + 1.0), s=10 + 60 * norm**2, color=color, label=seed)
        a.set_ylim(0, len(seeds) + 0.6)
        a.set_yticks(np.arange(1, len(seeds) + 1), [])
        a.set_title(label, fontsize=9)
    ax.flat[0].legend(fontsize=6, loc="lower left", bbox_to_anchor=(-0.25, -0.2))
    return to_png(fig)


def plane_projections(panels: list[tuple[str, np.ndarray]], title: str) -> bytes:
    """Scatter of decoder directions' 2-D coordinates in each key plane (unit circle drawn)."""
    n = len(panels)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, ax = _figure(3.0 * ncols, 3.1 * nrows + 0.4, nrows, ncols, top=0.8, left=0.5)
    fig.suptitle(title, fontsize=9)
    t = np.linspace(0, 2 * np.pi, 100)
    for idx, a in enumerate(ax.flat):
        if idx >= n:
            a.set_visible(False)
            continue
        label, xy = panels[idx]
        a.plot(np.cos(t), np.sin(t), color="0.7", lw=0.8)
        a.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7)
        a.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", title=label)
        a.title.set_fontsize(9)
    return to_png(fig)


def purity_heatmap(share_LF: np.ndarray, freqs: list[int], title: str) -> bytes:
    """Latents (rows, sorted by dominant frequency) x key frequencies (+ residual column)."""
    fig, ax = _figure(7, min(2.4 + 0.06 * share_LF.shape[0], 12), left=0.9)
    a = ax[0, 0]
    im = a.imshow(share_LF, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    a.set_xticks(range(len(freqs) + 1), [str(f) for f in freqs] + ["rest"])
    a.set(xlabel="key frequency", ylabel="latent (sorted by dominant frequency)")
    a.set_title(title, fontsize=8)
    fig.colorbar(im, ax=a, label="share of decoder norm^2")
    return to_png(fig)


def dynamics(panels: list[tuple[str, Any]], metric_label: str) -> bytes:
    """Per arch: metric value vs SAE training step, a line per (width, sparsity); dotted = baseline."""
    n = len(panels)
    fig, ax = _figure(min(4.5 * n, 16), 3.6, 1, n)
    for a, (title, df) in zip(ax[0], panels, strict=True):
        keys = list(df.groupby(["d_sae", "sparsity"]).groups)
        for color, key in zip(_colors(len(keys)), keys, strict=True):
            g = df[(df.d_sae == key[0]) & (df.sparsity == key[1])].sort_values("step")
            g = g[g.step > 0]
            a.plot(g.step, g.value, marker=".", color=color, label=f"w={key[0]:g}, s={key[1]:g}")
            if "baseline" in g and g.baseline.notna().any():
                a.plot(g.step, g.baseline, ":", color=color, lw=0.8)
        a.set(xscale="log", xlabel="SAE training step", ylabel=metric_label, title=title)
        a.grid(alpha=0.3)
        a.legend(fontsize=6)
    return to_png(fig)


def paired_scatter(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, xlabel: str, ylabel: str
) -> bytes:
    """``y`` against ``x``, one colour per group label, with the diagonal y = x."""
    fig, ax = _figure(5.5, 5.0)
    a = ax[0, 0]
    keep = np.isfinite(x) & np.isfinite(y)
    names = sorted(set(groups[keep].tolist()))
    for color, name in zip(_colors(len(names)), names, strict=True):
        sel = keep & (groups == name)
        a.scatter(x[sel], y[sel], s=18, color=color, label=str(name))
    lo = float(min(np.min(x[keep]), np.min(y[keep]), 0.0)) if keep.any() else 0.0
    a.plot([lo, 1.0], [lo, 1.0], color="0.6", lw=1)
    a.set(xlabel=xlabel, ylabel=ylabel, xlim=(lo, 1.02), ylim=(lo, 1.02))
    a.grid(alpha=0.3)
    if names:
        a.legend(fontsize=7)
    return to_png(fig)
