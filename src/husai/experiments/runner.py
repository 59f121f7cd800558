"""``run_study``: the main job, resumable at every stage.

Before anything is written, the study is checked: its grid, its ``transformer_run`` (a
path that holds no model run is an error; ``transformer_run: null`` asks for a new model),
its hook names and its checkpoints. Then the run store is locked (one writer) and the
stages run, each skipped when its outputs exist for the same content:

1. model: reuse the study's ``transformer_run`` if its task/model/train config matches,
   else train one into ``<store>/<name>-model``; copy its curves and Fourier analysis to
   ``<store>/model/``;
2. activations: every (checkpoint, hook) of the grid, with its ground-truth planes;
3. units: every batched SAE training pass, through the chosen executor; the driver
   writes each result as it arrives and logs it to W&B; a unit whose files are missing
   or fail their checksum is redone;
4. tables: ``results``, ``pairs``, ``summary``, ``dynamics`` (parquet), failures,
   provenance;
5. the report (``report.html`` and ``report.md``).

A study with a ``language_model`` source has no transformer of its own: stage 1 records the
language model (``model/language_model.json``), stage 2 extracts its residual stream over
the study's text per grid hook (:mod:`husai.lm.extract`), and the units run without planes
or loss recovered. Its model and text are checked before anything is written.

A full disk is one line (:class:`DiskFullError`); Ctrl-C is :class:`RunInterrupted`, whose
message says that rerunning resumes. Either way the lock is released.
"""

from __future__ import annotations

import errno
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from husai import layout
from husai.activations import extract_to_dirs, hook_slug, load_activations
from husai.config import StudyConfig, language_model_layer
from husai.devices import unit_device
from husai.errors import DiskFullError, RunInterrupted, UserError
from husai.experiments.consensus_step import run_consensus
from husai.experiments.executors import run_local, run_ray
from husai.experiments.grid import Unit, estimate_cost, expand_grid
from husai.experiments.provenance import provenance
from husai.experiments.store import RunStore
from husai.experiments.tables import build_tables
from husai.experiments.tracking import log_unit
from husai.experiments.unit import UnitPayload, UnitResult
from husai.io import atomic_write_bytes, atomic_write_json
from husai.metrics.data_baselines import data_rank
from husai.model import load_model
from husai.model.build import build_model
from husai.model.fourier import task_group
from husai.model.splice import check_hook
from husai.model.store import config_fingerprint, list_checkpoints, load_run_config
from husai.model.train import checkpoint_steps, train_model
from husai.progress import progress_bar
from husai.report import build_report
from husai.resources import locate, shipped
from husai.tasks import make_dataset

log = logging.getLogger(__name__)


def run_study(
    study_path: str | Path,
    *,
    out: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    overrides: list[str] | None = None,
    report: bool = True,
    console: Console | None = None,
) -> Path:
    """Run (or resume) a study; returns the report path, or the store root if ``report`` is False."""
    console = console or Console(stderr=True)
    if executor not in ("local", "ray"):
        raise UserError(f"--executor: expected 'local' or 'ray', got {executor!r}")
    study_file = locate(study_path)
    if study_file != Path(study_path):
        console.print(f"study file: {study_file} (shipped with husai)")
    study = StudyConfig.from_yaml(study_file, overrides)
    study = study.model_copy(update={"device": unit_device(study.device, executor)})
    units = expand_grid(study)  # validates every grid value before any work
    reuse, lm = None, None
    if study.language_model is None:
        reuse = model_to_reuse(study, study_path)
        check_hooks_and_checkpoints(study, study_path, reuse)
    else:
        lm = load_study_language_model(study, study_path)
    root = Path(out) if out else Path("runs") / study.name
    try:
        with _disk_full_is_one_line(root):
            store = RunStore(root)
            with store.lock():
                result = _run(study, store, units, (reuse, lm), executor, address, report, console)
        console.print(f"peak memory: {peak_rss_gb():.2f} GB resident (RSS, largest process)")
        return result
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"run interrupted; finished units are kept in {root}; rerun the same command to resume"
        ) from None


def _run(
    study: StudyConfig,
    store: RunStore,
    units: list[Unit],
    source: tuple[Path | None, Any],
    executor: str,
    address: str | None,
    report: bool,
    console: Console,
) -> Path:
    """The five stages, in a locked store. ``source``: the model run to reuse (or None), and
    the loaded language model of a language-model study (else None)."""
    reuse, lm = source
    store.remove_leftovers()
    study.to_yaml(store.root / "study.yaml")
    console.print(
        f"[bold]study[/] {study.name}: {len(units)} units, {sum(u.n_models for u in units)} SAEs -> {store.root}"
    )

    console.print("[bold]stage 1/5[/] model")
    model_dir = (
        ensure_model(study, store, reuse) if lm is None else record_language_model(store, lm)
    )
    console.print("[bold]stage 2/5[/] activations")
    with _disk_full_is_one_line(store.root / layout.ACTIVATIONS):
        if lm is None:
            acts_dirs = ensure_activations(study, store, model_dir)
        else:
            acts_dirs = ensure_lm_activations(study, store, lm)
    d_in = {hook: _acts_dim(path) for (_, hook), path in acts_dirs.items()}
    cost = estimate_cost(units, d_in)
    console.print(
        f"estimated cost: {cost['saes']} SAEs, <= {cost['sae_steps']:.3g} SAE-steps, <= {cost['flops']:.3g} FLOPs"
    )
    console.print("[bold]stage 3/5[/] SAE units")
    run_units(study, store, units, acts_dirs, model_dir, executor, address, console)
    console.print("[bold]stage 4/5[/] tables")
    records = store.records()
    ranks = {key: _acts_dir_rank(path) for key, path in acts_dirs.items()}
    build_tables(records, store.root, bootstrap=study.metrics.bootstrap, data_ranks=ranks)
    failures = [
        {"unit_id": r["unit_id"], "error": r["error"]} for r in records if r["status"] != "ok"
    ]
    atomic_write_json(store.root / "failures.json", failures)
    atomic_write_json(store.root / "provenance.json", provenance(study, model_dir))
    if failures:
        console.print(
            f"[yellow]{len(failures)} unit(s) failed; see {store.root / 'failures.json'}[/]"
        )
    current = {_unit_id(unit, acts_dirs, study.device) for unit in units}
    ours = [r for r in records if r["unit_id"] in current]
    run_consensus(study, store.root, ours, acts_dirs, console)
    if not report:
        return store.root
    console.print("[bold]stage 5/5[/] report")
    return build_report(
        store.root,
        stability_threshold=study.report.stability_threshold,
        ev_threshold=study.report.ev_threshold,
    )


def peak_rss_gb() -> float:
    """Peak resident memory of this process or its largest finished child, in GB (1e9 bytes)."""
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return peak * scale / 1e9


def load_study_language_model(study: StudyConfig, study_path: str | Path) -> Any:
    """The study's language model, loaded, with every grid layer and text source checked
    (one UserError line naming the study file otherwise); nothing is written."""
    from husai.lm.models import load_language_model
    from husai.lm.text import check_sources

    source = study.language_model
    assert source is not None
    try:
        check_sources(list(source.text))
        lm = load_language_model(source.model)
        for hook in study.hooks:
            lm.check_layer(_lm_layer(hook))
    except UserError as err:
        raise UserError(f"{study_path}: language_model: {err}") from None
    return lm


def record_language_model(store: RunStore, lm: Any) -> None:
    """Stage 1 of a language-model study: no transformer to train; what it reads is recorded
    (returns None: there is no model run)."""
    about = {
        "source": "language_model",
        "model": lm.name,
        "model_loader": lm.source,
        "model_sha256": lm.sha256,
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
    }
    atomic_write_json(store.root / "model" / "language_model.json", about)


def ensure_lm_activations(
    study: StudyConfig, store: RunStore, lm: Any
) -> dict[tuple[str, str], Path]:
    """A language model's activations per grid hook (``husai extract-lm``, reused while its
    job key, i.e. weights, layer, context and text, is unchanged)."""
    from husai.lm.extract import extract_lm_from

    source = study.language_model
    assert source is not None
    out = {}
    for hook in study.hooks:
        path = layout.activations_dir(store.root, "final", hook_slug(hook))
        out[("final", hook)] = extract_lm_from(
            lm,
            _lm_layer(hook),
            list(source.text),
            path,
            max_tokens=source.max_tokens,
            context=source.context,
            batch_size=source.batch_size,
        )
    return out


def _lm_layer(hook: str) -> int:
    layer = language_model_layer(hook)
    if layer is None:  # StudyConfig has refused such a hook already
        raise UserError(f"grid.hooks: expected blocks.L.hook_resid_post, got {hook!r}")
    return layer


def model_to_reuse(study: StudyConfig, study_path: str | Path) -> Path | None:
    """The model run to reuse, or None to train one (``transformer_run: null``, or a run
    trained with another config). A ``transformer_run`` that holds no model run is an error."""
    if study.transformer_run is None:
        log.info("transformer_run is null: the study trains its own model")
        return None
    run = _model_run(study.transformer_run)
    if run is None:
        raise UserError(
            f"{study_path}: transformer_run: no model run at {study.transformer_run} "
            "(no model.safetensors there); fix the path, or set transformer_run: null "
            "to train a new model"
        )
    if config_fingerprint(load_run_config(run)) != config_fingerprint(study.model_experiment()):
        log.warning("transformer_run %s was trained with another config; training a new model", run)
        return None
    return run


def check_hooks_and_checkpoints(
    study: StudyConfig, study_path: str | Path, reuse: Path | None
) -> None:
    """The task has a ground truth, every grid hook exists in the model and every checkpoint
    is one the model has (or, for a model still to train, one its training will save); else
    one UserError line."""
    try:
        task_group(study.task.op, study.task.modulus)
    except UserError as err:
        raise UserError(f"{study_path}: {err}") from None
    model = build_model(study.task, study.model)
    for hook in study.hooks:
        try:
            check_hook(model, hook)
        except UserError as err:
            raise UserError(f"{study_path}: grid.hooks: {err}") from None
    if reuse is not None:
        have, source = list_checkpoints(reuse), f"checkpoints of {reuse}"
    else:
        have = checkpoint_steps(study.train.steps, study.train.n_checkpoints)
        source = "checkpoints the model's training will save"
    for checkpoint in study.checkpoints:
        step = re.fullmatch(r"step_(\d+)", checkpoint)
        if checkpoint != "final" and (step is None or int(step.group(1)) not in have):
            listed = ", ".join(f"step_{s}" for s in have) or "none"
            raise UserError(
                f"{study_path}: grid.checkpoints: expected 'final' or one of the {source} "
                f"({listed}), got {checkpoint!r}"
            )


def ensure_model(study: StudyConfig, store: RunStore, reuse: Path | None) -> Path:
    """The model run to use: ``reuse`` if given, else one trained into the store."""
    if reuse is None:
        with _disk_full_is_one_line(store.root / study.model_experiment().name):
            model_dir = train_model(study.model_experiment(), store.root)
    else:
        model_dir = reuse
    dest = store.root / "model"
    with _disk_full_is_one_line(dest):
        for name in ("config.yaml", "curves.json", "fourier.json", "metrics.json"):
            if (model_dir / name).is_file():
                atomic_write_bytes(dest / name, (model_dir / name).read_bytes())
    return model_dir


@contextmanager
def _disk_full_is_one_line(path: Path) -> Iterator[None]:
    """ENOSPC while writing under ``path`` becomes a DiskFullError naming it; the atomic
    writers have removed their temporary files by then, so nothing partial is kept."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise DiskFullError.writing(path) from None


def ensure_activations(
    study: StudyConfig, store: RunStore, model_dir: Path
) -> dict[tuple[str, str], Path]:
    """Activation dirs per (checkpoint, hook); reused while the model checksum is unchanged."""
    out = {}
    for checkpoint in study.checkpoints:
        paths = extract_to_dirs(
            model_dir,
            study.hooks,
            store.root / layout.ACTIVATIONS / checkpoint,
            checkpoint=checkpoint,
        )
        out.update(
            {(checkpoint, hook): path for hook, path in zip(study.hooks, paths, strict=True)}
        )
    return out


def run_units(
    study: StudyConfig,
    store: RunStore,
    units: list[Unit],
    acts_dirs: dict,
    model_dir: Path | None,
    executor: str,
    address: str | None,
    console: Console,
) -> None:
    todo: list[tuple[Unit, str, Path]] = []
    for unit in units:
        acts_dir = acts_dirs[(unit.checkpoint, unit.hook)]
        uid = _unit_id(unit, acts_dirs, study.device)
        if not store.is_done(uid):
            todo.append((unit, uid, acts_dir))
    console.print(f"{len(units) - len(todo)} unit(s) already done, {len(todo)} to run")
    cache: dict[Path, Any] = {}

    def payloads():
        for unit, uid, acts_dir in todo:
            if acts_dir not in cache:
                cache.clear()
                cache[acts_dir] = load_activations(acts_dir)
            yield _payload(study, unit, uid, cache[acts_dir], model_dir)

    content = {uid: unit.content() for unit, uid, _ in todo}
    with progress_bar("units", len(todo), console=console) as bar:

        def on_result(result: UnitResult) -> None:
            store.write_unit(result, content[result.unit_id])
            log_unit(study.tracking, study.name, store.root, result, content[result.unit_id])
            status = "ok" if result.status == "ok" else f"[red]failed: {result.error}[/]"
            bar.print(f"  {result.unit_id}: {status} ({result.steps} steps, {result.wall_s:.1f}s)")
            bar.advance()

        if executor == "ray":
            run_ray(list(payloads()), on_result, address=address)
        else:
            run_local(payloads(), on_result)


def _payload(
    study: StudyConfig, unit: Unit, uid: str, acts: Any, model_dir: Path | None
) -> UnitPayload:
    if model_dir is None:  # a language model: no planes, no splicing
        return UnitPayload(
            unit=unit, unit_id=uid, acts_ND=acts.acts, metrics=study.metrics, device=study.device
        )
    ds = make_dataset(study.task)
    model = load_model(model_dir, unit.checkpoint) if study.metrics.loss_recovered else None
    return UnitPayload(
        unit=unit,
        unit_id=uid,
        acts_ND=acts.acts,
        metrics=study.metrics,
        planes=acts.planes,
        modulus=study.task.modulus,
        model_cfg=study.model_experiment(),
        model_state=None
        if model is None
        else {k: v.clone() for k, v in model.state_dict().items()},
        tokens=ds.tokens,
        labels=ds.labels,
        device=study.device,
    )


def _unit_id(unit: Unit, acts_dirs: dict[tuple[str, str], Path], device: str) -> str:
    return unit.unit_id(_activations_id(acts_dirs[(unit.checkpoint, unit.hook)]), device)


def _activations_id(acts_dir: Path) -> str:
    meta = json.loads((acts_dir / "meta.json").read_text())
    return f"{meta.get('model_sha256')}:{meta.get('hook')}:{meta.get('checkpoint', 'final')}:{meta.get('position', -1)}"


def _acts_dir_rank(acts_dir: Path) -> int:
    """The rank of the activations' principal subspace, as the units' data baselines use it."""
    return data_rank(load_activations(acts_dir).acts)


def _acts_dim(acts_dir: Path) -> int:
    return int(json.loads((acts_dir / "meta.json").read_text())["d"])


def _model_run(path: str) -> Path | None:
    """The model run at ``path`` (relative: here, else the one shipped with husai), or None."""
    for candidate in (Path(path), shipped(path)):
        if candidate is not None and (candidate / "model.safetensors").is_file():
            return candidate
    return None
