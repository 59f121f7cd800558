"""The ``husai`` command line: a thin typer app, one library call per command.

Each command imports its library function inside its body (a plain ``from husai.x import
f``, so go-to-definition works): importing them all at the top pulls in torch,
TransformerLens and SAELens and makes ``husai --help`` take seconds instead of a fraction
of one. Relative config and model paths are looked up here, then among the files shipped
with husai (:func:`husai.resources.locate`).

Every command runs under :func:`_user_errors`: a user mistake (``husai.errors.UserError``,
which includes config errors) prints one line to stderr and exits with code 2, without a
traceback; Ctrl-C prints its message (a study says how to resume) and exits with 130.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer

from husai.errors import UserError
from husai.io import check_out_dir
from husai.resources import DEFAULT_MODEL, data_root, locate

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="HUSAI: are SAE features stable across seeds?"
)
Command = TypeVar("Command", bound=Callable[..., Any])

SetOpt = typer.Option(
    None, "--set", help="Override a config field, e.g. --set sae.k=16 (repeatable)."
)
DeviceOpt = typer.Option(
    None,
    "--device",
    help="'auto' (CUDA when available), 'cpu' or 'cuda'; default: the config's device (cpu).",
)


def _with_device(set_: Optional[list[str]], device: Optional[str]) -> list[str]:
    """``--device`` as the config override ``device=...`` (validated with the config)."""
    return [*(set_ or []), *([f"device={device}"] if device is not None else [])]


@contextmanager
def _user_errors() -> Iterator[None]:
    """A UserError becomes ``error: ...`` and exit 2; Ctrl-C its message and exit 130."""
    try:
        yield
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as err:  # e.g. RunInterrupted, whose message says how to resume
        typer.echo(str(err) or "interrupted", err=True)
        raise typer.Exit(130) from None


def _command(name: str) -> Callable[[Command], Command]:
    """Register ``husai NAME``, run under :func:`_user_errors`; the function is unchanged."""

    def register(fn: Command) -> Command:
        @functools.wraps(fn)
        def handled(*args: Any, **kwargs: Any) -> Any:
            with _user_errors():
                return fn(*args, **kwargs)

        app.command(name)(handled)
        return fn

    return register


def _load(path: Path, overrides: Optional[list[str]], kind: str = "experiment") -> Any:
    from husai.config import load_any_config

    return load_any_config(locate(path), overrides or [], kind=kind)


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


@_command("train-model")
def train_model_command(
    config: Path = typer.Argument(..., help="Experiment/model YAML (task, model, train)."),
    out: Path = typer.Option(Path("runs/models"), help="Parent directory of the model run."),
    set_: Optional[list[str]] = SetOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Train the transformer on the modular task (full batch) and save checkpoints."""
    from husai.model.train import train_model

    run_dir = train_model(_load(config, _with_device(set_, device)), out)
    print(f"model run: {run_dir}")


@_command("extract")
def extract(
    model_dir: Path = typer.Argument(..., help="A model run directory."),
    hook: list[str] = typer.Option(["blocks.0.hook_resid_post"], help="Hook name(s) to read."),
    position: int = typer.Option(-1, help="Sequence position (-1: final)."),
    out: Path = typer.Option(
        Path("runs/activations"), help="Parent directory of the activation dirs."
    ),
    device: str = typer.Option("cpu", help="'auto', 'cpu' or 'cuda': where the forward runs."),
) -> None:
    """Extract activations at hook points for all p^2 inputs, with ground-truth Fourier planes."""
    from husai.activations import extract_to_dirs

    for path in extract_to_dirs(model_dir, hook, out, position=position, device=device):
        print(f"activations: {path}")


@_command("extract-lm")
def extract_lm(
    model: str = typer.Option(
        ...,
        help="'minilm' (the offline demo of the 'lm' extra), a local transformers model "
        "directory, a TransformerLens name (gpt2, pythia-70m; downloads) or hf:ORG/NAME (downloads).",
    ),
    layer: int = typer.Option(..., help="Block L: the residual stream after it is read (0-based)."),
    text: list[str] = typer.Option(
        ...,
        help="Text file, directory of .txt/.md/.rst files, or 'pydoc' (CPython's docs); repeatable.",
    ),
    max_tokens: Optional[int] = typer.Option(None, help="Stop after this many text tokens."),
    context: int = typer.Option(128, help="Tokens per window, special tokens included."),
    device: str = typer.Option("cpu", help="'auto', 'cpu' or 'cuda'."),
    batch_size: int = typer.Option(32, min=1, help="Windows per forward pass."),
    out: Optional[Path] = typer.Option(
        None, help="Activation directory (default runs/activations/lm_<model>_L<layer>)."
    ),
) -> None:
    """Residual-stream activations of a language model over text, per token, as an activation
    directory (with token ids and positions); resumable."""
    from husai.lm import extract_lm as run_extract_lm

    if out is None:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model).name or model)
        out = Path("runs/activations") / f"lm_{slug}_L{layer}"
    check_out_dir(out)
    path = run_extract_lm(
        model,
        layer,
        text,
        out,
        max_tokens=max_tokens,
        context=context,
        device=device,
        batch_size=batch_size,
    )
    print(f"activations: {path}")


@_command("train-saes")
def train_saes(
    config: Path = typer.Argument(..., help="Experiment YAML (sae, sae_train)."),
    activations: Optional[Path] = typer.Option(
        None,
        help="An activation directory from `husai extract` (default: the committed model's, at the config's hook).",
    ),
    out: Path = typer.Option(Path("runs/saes"), help="Parent directory; one subdirectory per SAE."),
    set_: Optional[list[str]] = SetOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Train one batched group of SAEs (every seed at once) and write one directory per SAE."""
    from husai.activations import extract_to_dirs
    from husai.saes.api import train_saes_from_config

    cfg = _load(config, _with_device(set_, device))
    if activations is None:
        model_dir = data_root() / DEFAULT_MODEL
        (activations,) = extract_to_dirs(
            model_dir, [cfg.hook], Path("runs/activations"), device=cfg.device
        )
        print(f"activations: {activations}")
    for path in train_saes_from_config(cfg, activations, out):
        print(f"sae: {path}")


@_command("analyze")
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
    from husai.metrics.analyze import analyze_dirs

    table = analyze_dirs(sae_dirs, ground_truth, out)
    print(table)
    print(f"json: {out}")


@_command("trust")
def trust(
    sae_dirs: list[Path] = typer.Argument(
        ...,
        help="Two or more SAE directories in SAELens format (any source, one d_in), "
        "or a directory of them.",
    ),
    activations: Optional[Path] = typer.Option(
        None,
        help="HUSAI activation directory, or a .safetensors/.npy/.pt tensor (n x d_in): adds "
        "firing frequency, the correlation of each latent's codes with its partners' and the "
        "random baseline inside the activations' principal subspace.",
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
    from husai.report.trust_page import trust_report

    check_out_dir(out)
    text = trust_report(
        sae_dirs, out, activations=activations, tau=tau, subspace_rank=subspace_rank
    )
    print(text)
    print(f"table: {out / 'trust.parquet'}, {out / 'trust.csv'}; page: {out / 'trust.html'}")


@_command("consensus")
def consensus(
    sae_dirs: list[Path] = typer.Argument(
        ..., help="Two or more SAE directories (SAELens format, one d_in), or a directory of them."
    ),
    activations: Path = typer.Option(
        ...,
        help="Activation directory the SAEs read: the encoder is fitted and EV/L0 measured on it.",
    ),
    out: Path = typer.Option(
        Path("consensus"), help="Directory for the consensus SAE (SAELens format + consensus.json)."
    ),
    min_seeds: Optional[int] = typer.Option(
        None,
        help="Keep clusters with latents of at least this many SAEs, in [1, n] "
        "(default: the smallest m with (m-1)/(n-1) >= 1/2).",
    ),
    tau: float = typer.Option(
        0.7,
        help="Decoder cosine at which latents of different SAEs may share a cluster, in (0, 1].",
    ),
    k: Optional[int] = typer.Option(
        None, help="TopK refit with k active latents (default: the seeds' mean L0)."
    ),
    l1: Optional[float] = typer.Option(
        None, help="ReLU refit with this L1 coefficient instead of TopK."
    ),
    steps: int = typer.Option(2000, help="Adam steps fitting the encoder, decoder fixed."),
    finetune_steps: int = typer.Option(
        0, help="Further steps training decoder and encoder together."
    ),
    seed: int = typer.Option(0, help="Data-order seed of the fit."),
) -> None:
    """Consensus SAE: the latents at least --min-seeds SAEs share (decoder cosine >= tau), their
    mean directions as the decoder, the encoder fitted on the activations; EV and L0 beside the seeds'."""
    from husai.metrics.consensus_sae import build_consensus, consensus_report

    result = build_consensus(
        sae_dirs,
        activations,
        out,
        min_seeds=min_seeds,
        tau=tau,
        k=k,
        l1=l1,
        steps=steps,
        finetune_steps=finetune_steps,
        seed=seed,
    )
    print(consensus_report(result))
    print(f"sae: {out}")


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
    from husai.experiments import run_study
    from husai.experiments.suite import is_suite, run_suite

    if out is not None:
        check_out_dir(out)
    return (run_suite if is_suite(study) else run_study)(
        study,
        out=out,
        executor=executor,
        address=address,
        overrides=set_ or [],
        report=report,
    )


@_command("sweep")
def sweep(
    study: Path = typer.Argument(..., help="Study YAML."),
    out: Optional[Path] = StudyOut,
    executor: str = ExecutorOpt,
    address: Optional[str] = AddressOpt,
    set_: Optional[list[str]] = SetOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Run a study's SAE grid (resumable) and write results tables, without the report."""
    overrides = _with_device(set_, device)
    print(f"study: {_study(study, out, executor, address, overrides, report=False)}")


@_command("report")
def report(run_dir: Path = typer.Argument(..., help="A study run directory.")) -> None:
    """Write report.html and report.md for a finished study."""
    from husai.report import build_report

    path = build_report(run_dir)
    print(f"report: {path}")


@_command("run")
def run(
    study: Path = typer.Argument(
        Path("configs/studies/default.yaml"),
        help="Study YAML (a relative path that is not here is read from the configs shipped "
        "with husai).",
    ),
    out: Optional[Path] = StudyOut,
    executor: str = ExecutorOpt,
    address: Optional[str] = AddressOpt,
    set_: Optional[list[str]] = SetOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """The main job: model, activations, SAEs, metrics and the report, resumably."""
    overrides = _with_device(set_, device)
    print(f"report: {_study(study, out, executor, address, overrides, report=True)}")


@_command("validate")
def validate(
    config: Path = typer.Argument(..., help="An experiment or a study YAML."),
    set_: Optional[list[str]] = SetOpt,
    kind: str = typer.Option(
        "auto", help="'experiment', 'study' or 'auto' (a study has grid/metrics/report keys)."
    ),
) -> None:
    """Validate an experiment, study or suite config; print which kind it is, then the resolved YAML."""
    from husai.experiments.suite import is_suite, load_members

    if kind == "auto" and is_suite(config):
        suite, members = load_members(config, set_ or [])
        print(f"# {config}: valid suite of {len(members)} studies ({suite.name})")
        for member in members:
            print(f"---\n# study {member.name}\n{member.to_yaml()}", end="")
        return
    cfg = _load(config, set_, kind=kind)
    print(f"# {config}: valid {type(cfg).__name__.removesuffix('Config').lower()} config")
    print(cfg.to_yaml(), end="")


def main() -> None:
    app(prog_name="husai")


if __name__ == "__main__":
    sys.exit(main())
