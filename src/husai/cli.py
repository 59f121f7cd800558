"""The ``husai`` command line: a thin typer app, one library call per command.

User mistakes (``husai.errors.UserError``, which includes config errors) print one
line to stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="HUSAI: are SAE features stable across seeds?"
)

SetOpt = typer.Option(
    None, "--set", help="Override a config field, e.g. --set sae.k=16 (repeatable)."
)


def _call(module: str, func: str, *args: Any, **kwargs: Any) -> Any:
    """Import ``module.func`` and call it; user errors become one line and exit 2."""
    from husai.errors import UserError

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            typer.echo(f"error: this command is not built yet ({module} does not exist)", err=True)
            raise typer.Exit(2) from None
        raise
    fn: Callable[..., Any] | None = getattr(mod, func, None)
    if fn is None:
        typer.echo(
            f"error: this command is not built yet ({module}.{func} does not exist)", err=True
        )
        raise typer.Exit(2)
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as err:  # e.g. RunInterrupted, whose message says how to resume
        typer.echo(str(err) or "interrupted", err=True)
        raise typer.Exit(130) from None


def _load(path: Path, overrides: Optional[list[str]], kind: str = "experiment") -> Any:
    from husai.config import ConfigError, load_any_config

    try:
        return load_any_config(path, overrides or [], kind=kind)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _check_out_dir(out: Path) -> None:
    """Exit 2 with one line unless ``out`` is, or can be made, a writable directory."""
    existing = out.absolute()
    while not existing.exists():  # creates nothing: the run store is made later
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem is not None:
        typer.echo(f"error: --out {out}: {problem}", err=True)
        raise typer.Exit(2)


@app.callback()
def _options(
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        min=1,
        help="torch CPU threads (default: torch's, all cores; 1 is faster on a busy machine). "
        "Results may differ in the last bits between thread counts (README, Reproducibility).",
    ),
) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@app.command("train-model")
def train_model(
    config: Path = typer.Argument(..., help="Experiment/model YAML (task, model, train)."),
    out: Path = typer.Option(Path("runs/models"), help="Parent directory of the model run."),
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Train the transformer on the modular task (full batch) and save checkpoints."""
    run_dir = _call("husai.model.train", "train_model", _load(config, set_), out)
    print(f"model run: {run_dir}")


@app.command("extract")
def extract(
    model_dir: Path = typer.Argument(..., help="A model run directory."),
    hook: list[str] = typer.Option(["blocks.0.hook_resid_post"], help="Hook name(s) to read."),
    position: int = typer.Option(-1, help="Sequence position (-1: final)."),
    out: Path = typer.Option(
        Path("runs/activations"), help="Parent directory of the activation dirs."
    ),
) -> None:
    """Extract activations at hook points for all p^2 inputs, with ground-truth Fourier planes."""
    for path in _call(
        "husai.activations", "extract_to_dirs", model_dir, hook, out, position=position
    ):
        print(f"activations: {path}")


@app.command("train-saes")
def train_saes(
    config: Path = typer.Argument(..., help="Experiment YAML (sae, sae_train)."),
    activations: Optional[Path] = typer.Option(
        None,
        help="An activation directory from `husai extract` (default: the committed model's, at the config's hook).",
    ),
    out: Path = typer.Option(Path("runs/saes"), help="Parent directory; one subdirectory per SAE."),
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Train one batched group of SAEs (every seed at once) and write one directory per SAE."""
    cfg = _load(config, set_)
    if activations is None:
        model_dir = Path(__file__).resolve().parents[2] / "artifacts" / "default_model"
        (activations,) = _call(
            "husai.activations", "extract_to_dirs", model_dir, [cfg.hook], Path("runs/activations")
        )
        print(f"activations: {activations}")
    for path in _call("husai.saes.api", "train_saes_from_config", cfg, activations, out):
        print(f"sae: {path}")


@app.command("analyze")
def analyze(
    sae_dirs: list[Path] = typer.Argument(
        ...,
        help="Two or more distinct SAE directories (HUSAI or SAELens), or a directory of them "
        "(e.g. train-saes --out); plain files such as group_*.json are skipped.",
    ),
    ground_truth: Optional[Path] = typer.Option(
        None, help="Activation directory with Fourier planes."
    ),
    out: Path = typer.Option(Path("analysis.json"), help="Where to write the JSON results."),
) -> None:
    """Stability metrics across SAEs, each with its random baseline; optionally vs ground truth."""
    table = _call("husai.metrics.analyze", "analyze_dirs", sae_dirs, ground_truth, out)
    print(table)
    print(f"json: {out}")


@app.command("trust")
def trust(
    sae_dirs: list[Path] = typer.Argument(
        ...,
        help="Two or more SAE directories in SAELens format (any source, one d_in), "
        "or a directory of them.",
    ),
    activations: Optional[Path] = typer.Option(
        None,
        help="HUSAI activation directory, or a .safetensors/.npy/.pt tensor (n x d_in): adds "
        "firing frequency and the correlation of each latent's codes with its partners'.",
    ),
    tau: float = typer.Option(
        0.7, help="Decoder cosine at which a latent counts as found in another SAE, in (0, 1]."
    ),
    subspace_rank: Optional[int] = typer.Option(
        None,
        help="r of the reproducible subspace (default: the participation ratio of the other "
        "SAEs' unstable latents, at most d_in/4).",
    ),
    out: Path = typer.Option(Path("trust"), help="Directory for trust.parquet, .csv and .html."),
) -> None:
    """Per-latent trust: which latents reappear in the other SAEs (stability at tau), their
    partners, and the reproducible subspace; each beside its random baseline."""
    _check_out_dir(out)
    text = _call(
        "husai.report.trust_page",
        "trust_report",
        sae_dirs,
        out,
        activations=activations,
        tau=tau,
        subspace_rank=subspace_rank,
    )
    print(text)
    print(f"table: {out / 'trust.parquet'}, {out / 'trust.csv'}; page: {out / 'trust.html'}")


StudyOut = typer.Option(None, "--out", help="Run store directory (default runs/<study-name>).")
ExecutorOpt = typer.Option("local", "--executor", help="'local' or 'ray'.")
AddressOpt = typer.Option(None, "--address", help="Ray address: auto or ray://host:port.")


def _study(
    study: Path,
    out: Path | None,
    executor: str,
    address: str | None,
    set_: list[str] | None,
    report: bool,
) -> Any:
    if out is not None:
        _check_out_dir(out)
    return _call(
        "husai.experiments",
        "run_study",
        study,
        out=out,
        executor=executor,
        address=address,
        overrides=set_ or [],
        report=report,
    )


@app.command("sweep")
def sweep(
    study: Path = typer.Argument(..., help="Study YAML."),
    out: Optional[Path] = StudyOut,
    executor: str = ExecutorOpt,
    address: Optional[str] = AddressOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Run a study's SAE grid (resumable) and write results tables, without the report."""
    print(f"study: {_study(study, out, executor, address, set_, report=False)}")


@app.command("report")
def report(run_dir: Path = typer.Argument(..., help="A study run directory.")) -> None:
    """Write report.html and report.md for a finished study."""
    path = _call("husai.report", "build_report", run_dir)
    print(f"report: {path}")


@app.command("run")
def run(
    study: Path = typer.Argument(Path("configs/studies/default.yaml"), help="Study YAML."),
    out: Optional[Path] = StudyOut,
    executor: str = ExecutorOpt,
    address: Optional[str] = AddressOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """The main job: model, activations, SAEs, metrics and the report, resumably."""
    print(f"report: {_study(study, out, executor, address, set_, report=True)}")


@app.command("validate")
def validate(
    config: Path = typer.Argument(..., help="An experiment or a study YAML."),
    set_: Optional[list[str]] = SetOpt,
    kind: str = typer.Option(
        "auto", help="'experiment', 'study' or 'auto' (a study has grid/metrics/report keys)."
    ),
) -> None:
    """Validate an experiment or study config; print which kind it is, then the resolved YAML."""
    cfg = _load(config, set_, kind=kind)
    print(f"# {config}: valid {type(cfg).__name__.removesuffix('Config').lower()} config")
    print(cfg.to_yaml(), end="")


def main() -> None:
    app(prog_name="husai")


if __name__ == "__main__":
    sys.exit(main())
