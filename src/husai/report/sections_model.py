"""Sections 1 (the model) and 2 (the activations), from model/*.json and activations/**/.

Each figure is drawn only from its own file; a missing file or key becomes a visible
note naming it.
"""

from __future__ import annotations

from husai.report import figures
from husai.report.render import Figure, Note, Para, Section, Table, fmt
from husai.report.store import RunView


def model_section(store: RunView) -> Section:
    sec = Section("1. The model", "model")
    m = store.model_metrics
    if m:
        keys = ("train_acc", "test_acc", "train_loss", "test_loss", "steps", "grok_step", "wall_s")
        task = store.task()
        rows = ([["task", task]] if task else []) + [[k, m[k]] for k in keys if k in m]
        sec.add(Table(["quantity", "value"], rows, "study.yaml (task), model/metrics.json"))
        if "grok_step" in m:
            g = m["grok_step"]
            sec.add(
                Para(
                    f"Test accuracy first reached 0.99 at step {g}."
                    if g is not None
                    else "Test accuracy never reached 0.99 in the logged steps (grok_step is null)."
                )
            )
        warning = not_grokked(m)
        if warning:
            sec.add(Note(warning))
    else:
        sec.add(Note(store.missing.get("model/metrics.json", "model/metrics.json is missing")))
    sec.subsections += [_curves(store), _fourier(store), _progress(store)]
    return sec


def not_grokked(m: dict | None) -> str | None:
    """A warning when the final test accuracy is below 0.99 (the Fourier ground truth may not hold)."""
    acc = (m or {}).get("test_acc")
    if not isinstance(acc, (int, float)) or acc >= 0.99:
        return None
    return (
        f"The transformer has not grokked: final test accuracy {fmt(acc)} < 0.99. Its Fourier "
        "planes may not be the features it uses, so read the ground-truth and geometry "
        "sections with care."
    )


def _curves(store: RunView) -> Section:
    sub = Section("Grokking curves", "model-curves")
    c = store.curves
    if not c or "step" not in c:
        return sub.add(
            Note(store.missing.get("model/curves.json", "model/curves.json has no 'step' list"))
        )
    n0 = sum(1 for s in c["step"] if s <= 0)
    cap = "Train (solid) and test (dashed) loss and accuracy against training step, log axis"
    cap += f" (the {n0} point(s) at step 0 cannot be drawn on it)." if n0 else "."
    return sub.add(Figure("model_curves", figures.grokking_curves(c), cap))


def _fourier(store: RunView) -> Section:
    sub = Section("Key frequencies and the Fourier spectrum of W_E", "model-fourier")
    f = store.fourier
    if not f:
        return sub.add(
            Note(store.missing.get("model/fourier.json", "model/fourier.json is missing"))
        )
    keys = f.get("key_freqs")
    sub.add(
        Para(
            f"Key frequencies: {', '.join(map(str, keys)) if keys else 'none listed in fourier.json'}."
        )
    )
    stats = [[k, f[k]] for k in ("gini_we", "top8_share_we") if k in f]
    if stats:
        sub.add(Table(["statistic", "value"], stats, "Sparsity of W_E in the Fourier basis"))
    if f.get("we_norms"):
        sub.add(
            Figure(
                "model_we_spectrum",
                figures.fourier_spectrum(f["we_norms"], keys or [], "W_E"),
                "Norm of W_E per Fourier frequency (key frequencies in red).",
            )
        )
    else:
        sub.add(Note("fourier.json has no 'we_norms'."))
    return sub


def _progress(store: RunView) -> Section:
    sub = Section("Restricted and excluded loss across checkpoints", "model-progress")
    prog = (store.fourier or {}).get("progress")
    if not prog or not prog.get("step"):
        return sub.add(
            Note("fourier.json has no 'progress' (restricted/excluded loss per checkpoint).")
        )
    cap = "Restricted loss (only key frequencies kept) and excluded loss (key frequencies removed) per checkpoint, Nanda et al. 2023 sec. 5.1, log axes."
    sub.add(Figure("model_progress", figures.progress_losses(prog), cap))
    absent = [k for k in ("restricted_loss", "excluded_loss") if k not in prog]
    if absent:
        sub.add(Note(f"progress lacks {', '.join(absent)}."))
    return sub


def activations_section(store: RunView) -> Section:
    sec = Section("2. The activations", "activations")
    if not store.acts:
        return sec.add(Note(store.missing.get("activations", "no activation dirs in this run")))
    rows, panels = [], []
    for a in store.acts:
        m = a.meta
        keys = m.get("key_freqs")
        rows.append(
            [
                m.get("hook", a.path.name),
                a.checkpoint or "",
                m.get("d"),
                m.get("n_inputs"),
                m.get("effective_rank"),
                m.get("key_r2_total"),
                ", ".join(map(str, keys)) if keys else "n/a",
            ]
        )
        planes = store.planes(a.hook, a.checkpoint)
        if planes is not None and planes.r2 is not None:
            panels.append((f"{a.hook} [{a.checkpoint}]", planes))
    cols = [
        "hook",
        "checkpoint",
        "d",
        "inputs",
        "effective rank",
        "variance in key planes",
        "key freqs",
    ]
    sec.add(
        Table(
            cols,
            rows,
            "From activations/**/meta.json. Effective rank is the participation ratio of the activation covariance.",
        )
    )
    for a in store.acts:
        r2v = a.meta.get("r2_by_variable")
        if isinstance(r2v, dict) and r2v:
            sec.add(
                Para(
                    f"{a.hook}: variance explained by ground-truth planes per variable: "
                    + ", ".join(f"{k} {fmt(v)}" for k, v in r2v.items())
                    + "."
                )
            )
    if panels:
        sec.add(
            Figure(
                "activations_planes",
                figures.plane_r2(panels),
                "Variance share of the ground-truth planes per frequency, stacked by input variable (planes.safetensors 'r2'); key frequencies are labelled in red.",
            )
        )
    else:
        sec.add(
            Note(
                "no planes.safetensors with 'r2' found, so the per-plane variance figure is omitted."
            )
        )
    missing_meta = sorted(
        {k for a in store.acts for k in ("effective_rank", "key_r2_total") if k not in a.meta}
    )
    if missing_meta:
        sec.add(Note(f"some meta.json files lack {', '.join(missing_meta)} (shown as n/a)."))
    return sec
