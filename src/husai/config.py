"""Validated configuration for every HUSAI stage.

All models are pydantic v2, frozen and ``extra="forbid"``: a typo'd key is an error,
never a silent default. Derived values (vocabulary size, context length) are
properties computed from the fields, never stored class-level arithmetic.

Seeds that vary independently are independent fields:

- ``task.data_seed``: the train/test split of the (a, b) pairs;
- ``model.seed``: the transformer's initialisation;
- ``sae_train.init_seeds``: one SAE initialisation per entry (one SAE per seed);
- ``sae_train.data_seed``: the order in which activations are shown to the SAEs.

Bad input raises :class:`ConfigError` whose message is one line naming the file, the
dotted field path and what was expected. An empty file is an error (never a default
config), and repeated ``init_seeds`` are refused. ``--set sae.arch=X`` drops the
``sae`` fields that X does not have (logged), so architectures can be switched.

Each SAE architecture's config class lives in its own module under :mod:`husai.saes`
(with the rest of that architecture) and is re-exported here; the ``sae`` union and
the grid's ``archs`` list the built-in architectures of :mod:`husai.saes.registry`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from husai.errors import UserError
from husai.io import atomic_write_text
from husai.model.fourier import is_prime
from husai.saes.batchtopk import BatchTopKSAEConfig as BatchTopKSAEConfig
from husai.saes.config_base import FrozenConfig, SAEConfigBase
from husai.saes.config_base import SAETrainConfig as SAETrainConfig
from husai.saes.jumprelu import JumpReLUSAEConfig as JumpReLUSAEConfig
from husai.saes.matryoshka import MatryoshkaSAEConfig as MatryoshkaSAEConfig
from husai.saes.registry import BUILT_IN, get_architecture
from husai.saes.relu import ReluSAEConfig as ReluSAEConfig
from husai.saes.topk import TopKSAEConfig as TopKSAEConfig

log = logging.getLogger(__name__)
OPS = ("add", "sub", "mul", "div")
TokenFormat = Literal["a_b_eq", "a_op_b_eq"]


class ConfigError(UserError):
    """A user mistake in a config file or override. ``str(err)`` is one line."""


class TaskConfig(FrozenConfig):
    """The algorithmic dataset: (a op b) mod p over all p^2 pairs."""

    modulus: Annotated[int, Field(strict=True, ge=2)] = 113
    """p, the modulus; an integer >= 2 (Nanda et al. 2023 use the prime 113)."""
    op: Literal["add", "sub", "mul", "div"] = "add"
    """The operation; 'div' needs a prime modulus and excludes b = 0."""
    token_format: TokenFormat = "a_b_eq"
    """'a_b_eq' = [a, b, =] (3 tokens) or 'a_op_b_eq' = [a, op, b, =] (4 tokens)."""
    train_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    """Share of the pairs used for training, strictly between 0 and 1."""
    data_seed: int = 598
    """Seed of the train/test split."""

    @model_validator(mode="after")
    def _div_needs_prime(self) -> TaskConfig:
        if self.op == "div" and not is_prime(self.modulus):
            raise ValueError(f"op 'div' needs a prime modulus, got {self.modulus}")
        return self

    @property
    def d_vocab(self) -> int:
        """Input vocabulary: p numbers, '=' (id p) and, in 'a_op_b_eq', 4 op tokens."""
        return self.modulus + 1 + (len(OPS) if self.token_format == "a_op_b_eq" else 0)

    @property
    def n_ctx(self) -> int:
        return 3 if self.token_format == "a_b_eq" else 4


class ModelConfig(FrozenConfig):
    """The transformer (a TransformerLens HookedTransformer); defaults are Nanda et al. 2023."""

    n_layers: Annotated[int, Field(ge=1)] = 1
    """Number of transformer blocks."""
    d_model: Annotated[int, Field(ge=1)] = 128
    """Residual stream width."""
    n_heads: Annotated[int, Field(ge=1)] = 4
    """Attention heads per block."""
    d_head: Annotated[int, Field(ge=1)] = 32
    """Width of each head."""
    d_mlp: Annotated[int, Field(ge=1)] = 512
    """MLP hidden width."""
    act_fn: Literal["relu", "gelu"] = "relu"
    """MLP activation."""
    normalization: Literal["none", "LN"] = "none"
    """'none' (Nanda et al.) or 'LN' (LayerNorm)."""
    seed: int = 999
    """Seed of the model's initialisation."""


class TrainConfig(FrozenConfig):
    """Full-batch AdamW training of the transformer (loss at the final position)."""

    steps: Annotated[int, Field(ge=1)] = 1500
    """Maximum number of full-batch steps."""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """AdamW learning rate."""
    weight_decay: Annotated[float, Field(ge=0)] = 1.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    warmup_steps: Annotated[int, Field(ge=0)] = 10
    """Linear LR warmup steps."""
    freeze_biases: bool = True
    """Keep all biases at zero, as in Nanda et al.'s code."""
    n_checkpoints: Annotated[int, Field(ge=1)] = 20
    """Number of checkpoints, at log-spaced steps (plus the final step)."""
    log_every: Annotated[int, Field(ge=1)] = 10
    """Steps between evaluations of train/test loss and accuracy."""
    early_stop_acc: Annotated[float, Field(gt=0, le=1)] | None = None
    """Stop once test accuracy has stayed >= this for ``early_stop_patience`` steps."""
    early_stop_patience: Annotated[int, Field(ge=0)] = 200
    """Steps test accuracy must hold above ``early_stop_acc`` before stopping."""
    fast_forward: bool = True
    """Train with the final-position forward (same parameters and logits, fewer FLOPs); false runs the plain HookedTransformer forward."""


SAE_CONFIGS: dict[str, type[SAEConfigBase]] = {a.name: a.config_class for a in BUILT_IN}
"""The config class of every built-in architecture, by name (from the registry)."""
SAE_ARCHS = tuple(SAE_CONFIGS)
SAEConfig = Annotated[Union[tuple(SAE_CONFIGS.values())], Field(discriminator="arch")]
"""One SAE's config: the built-in architecture's class its ``arch`` field names."""


class TrackingConfig(FrozenConfig):
    """Experiment tracking with Weights & Biases."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    """'offline' writes local run dirs, 'online' syncs, 'disabled' does nothing."""
    project: str = "husai"
    """W&B project name."""


class SweepConfig(FrozenConfig):
    """A grid of SAE configurations; expanded by ``husai.experiments``."""

    archs: Annotated[list[Literal[SAE_ARCHS]], Field(min_length=1)] = ["topk"]
    """Architectures to train."""
    widths: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [512]
    """Dictionary widths d_sae."""
    k: list[Annotated[int, Field(ge=1)]] = [4, 8, 16, 32]
    """k values for topk, batchtopk and matryoshka."""
    l1_coefficient: list[Annotated[float, Field(ge=0)]] = [1e-4, 3e-4, 1e-3, 3e-3]
    """L1 coefficients for relu."""
    l0_coefficient: list[Annotated[float, Field(ge=0)]] = [1e-4, 3e-4, 1e-3, 3e-3]
    """L0 coefficients for jumprelu."""
    hooks: Annotated[list[str], Field(min_length=1)] = ["blocks.0.hook_resid_post"]
    """Hook points whose activations the SAEs are trained on."""
    checkpoints: Annotated[list[str], Field(min_length=1)] = ["final"]
    """Transformer checkpoints: 'final' or 'step_<n>'."""
    sae_train: dict[str, Any] = {}
    """Overrides of the study's sae_train for this grid only (e.g. {steps: 800})."""

    @field_validator("sae_train")
    @classmethod
    def _valid_overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(SAETrainConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown sae_train field(s) {unknown}")
        return v

    @model_validator(mode="after")
    def _k_fits(self) -> SweepConfig:
        bad = [(k, w) for k in self.k for w in self.widths if k > w]
        if bad and any(get_architecture(a).sparsity_name == "k" for a in self.archs):
            k, w = bad[0]
            raise ValueError(f"expected every k <= every width, got k={k} > width {w}")
        return self


Device = Literal["auto", "cpu", "cuda"]
"""A device name as configs and ``--device`` take it (:func:`husai.devices.resolve_device`)."""


class ExperimentConfig(FrozenConfig):
    """A whole HUSAI experiment: task, transformer, its training, and the SAEs."""

    name: str = "husai"
    """Experiment name (used in run directories and W&B)."""
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sae: SAEConfig = TopKSAEConfig()
    sae_train: SAETrainConfig = SAETrainConfig()
    hook: str = "blocks.0.hook_resid_post"
    """Hook point whose activations the SAEs read."""
    sweep: SweepConfig = SweepConfig()
    tracking: TrackingConfig = TrackingConfig()
    device: Device = "cpu"
    """Where training and extraction run: ``auto`` (CUDA when available), ``cpu`` or ``cuda``
    (:mod:`husai.devices`); not part of any run's identity but an SAE unit's off the CPU."""

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
        return load_config(cls, path, overrides)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def with_overrides(self, overrides: list[str]) -> ExperimentConfig:
        return validate_dict(
            type(self), apply_overrides(self.model_dump(mode="json"), overrides), "<overrides>"
        )


M = TypeVar("M", bound=BaseModel)


def load_config(
    cls: type[M],
    path: str | Path,
    overrides: list[str] | None = None,
    preprocess: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None,
) -> M:
    """Read YAML (or JSON) at ``path`` into ``cls``, applying ``key.path=value`` overrides."""
    path = Path(path)
    raw = apply_overrides(read_mapping(path), overrides or [], source=str(path))
    if preprocess is not None:
        raw = preprocess(raw, path)
    return validate_dict(cls, raw, str(path))


def read_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML (or JSON) config file; an empty file is an error."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if raw is None or raw == {}:
        raise ConfigError(
            f"{path}: <root>: expected a mapping of config sections, got an empty config "
            "(defaults are never implied; start from a file in configs/)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _inline_model_config(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Copy task/model/train from the study's ``transformer_config`` file (explicit keys win)."""
    ref = raw.get("transformer_config")
    if not isinstance(ref, str):
        return raw
    target = (path.parent / ref) if not Path(ref).is_absolute() else Path(ref)
    if not target.is_file():
        raise ConfigError(f"{path}: transformer_config: file not found: {target}")
    model_cfg = load_config(ExperimentConfig, target)
    out = dict(raw)
    for key in ("task", "model", "train"):
        out.setdefault(key, getattr(model_cfg, key).model_dump(mode="json"))
    return out


def validate_dict(cls: type[M], raw: dict[str, Any], source: str) -> M:
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: '<source>: <dotted.path>: <what was expected> (got <input>)' for the first error."""
    errors = err.errors()
    first = errors[0]
    loc = [str(p) for p in first["loc"] if not _is_union_tag(p)]
    field = ".".join(loc) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (not a field of this section)"
    elif (
        "input" in first
        and first["type"] not in ("missing", "value_error")
        and not isinstance(first["input"], dict)
    ):
        msg = f"{msg} (got {first['input']!r})"
    more = f" [+{len(errors) - 1} more error(s)]" if len(errors) > 1 else ""
    return f"{source}: {field}: {msg}{more}"


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part in SAE_ARCHS


def apply_overrides(
    raw: dict[str, Any], overrides: list[str], source: str = "--set"
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict copy."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item}: {part} is not a section")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: value is not valid YAML") from None
    _drop_fields_of_old_arch(out, {item.split("=", 1)[0].strip() for item in overrides})
    return out


def _drop_fields_of_old_arch(raw: dict[str, Any], set_keys: set[str]) -> None:
    """After ``--set sae.arch=X``, drop the ``sae`` fields X does not have (unless also set)."""
    sae = raw.get("sae")
    if "sae.arch" not in set_keys or not isinstance(sae, dict):
        return
    arch = sae.get("arch")
    cls = SAE_CONFIGS.get(arch) if isinstance(arch, str) else None
    if cls is None:
        return  # validation names the unknown arch
    dropped = [k for k in sae if k not in cls.model_fields and f"sae.{k}" not in set_keys]
    for key in dropped:
        del sae[key]
    if dropped:
        names = ", ".join(f"sae.{k}" for k in dropped)
        log.warning("--set sae.arch=%s: dropped %s (not a field of %s)", arch, names, cls.__name__)


class StudyMetricsConfig(FrozenConfig):
    """How a study's stability and ground-truth metrics are computed."""

    shared_tau: Annotated[float, Field(gt=0, le=1)] = 0.7
    """Cosine threshold of the shared fraction (decoder and encoder)."""
    baseline_trials: Annotated[int, Field(ge=1)] = 8
    """Monte Carlo draws of random unit vectors per random baseline."""
    bootstrap: Annotated[int, Field(ge=0)] = 1000
    """Bootstrap resamples over seed pairs for confidence intervals (0: none)."""
    loss_recovered: bool = True
    """Splice each SAE's reconstruction into the model and measure the loss recovered."""


class ReportConfig(FrozenConfig):
    """Thresholds of the report's verdict."""

    stability_threshold: Annotated[float, Field(gt=0, le=1)] = 0.7
    """Alive-only PW-MCC a configuration must reach to count as stable."""
    ev_threshold: Annotated[float, Field(gt=0, le=1)] = 0.9
    """Explained variance a configuration must keep."""


class LanguageModelSource(FrozenConfig):
    """A language model over text as the study's activation source (``husai extract-lm``).

    Each grid hook ``blocks.L.hook_resid_post`` is the residual stream after block L
    (:mod:`husai.lm.models`); there is no task, no training of a transformer and no ground
    truth, and the grid's only checkpoint is ``final``.
    """

    model: Annotated[str, Field(min_length=1)] = "minilm"
    """``minilm`` (the offline demo of the ``lm`` extra), a local directory, a TransformerLens
    name, or ``hf:ORG/NAME``; only the last two may download."""
    text: Annotated[list[str], Field(min_length=1)] = ["pydoc"]
    """Plain-text files or directories (relative to the working directory), or ``pydoc``."""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    """Keep at most this many text tokens (None: all of the text)."""
    context: Annotated[int, Field(ge=2)] = 128
    """Window length in tokens, special tokens included."""
    batch_size: Annotated[int, Field(ge=1)] = 32
    """Windows per forward pass during extraction."""


class ConsensusStudyConfig(FrozenConfig):
    """A consensus SAE per configuration, built from its seeds after the units
    (:mod:`husai.experiments.consensus_step`, the same step as ``husai consensus``)."""

    min_seeds: Annotated[int, Field(ge=2)]
    """Keep clusters of decoder rows that hold latents of at least this many seeds (1 would
    keep every latent of every seed: nothing stable by construction)."""
    tau: Annotated[float, Field(gt=0, le=1)] | None = None
    """Decoder cosine that joins two latents in a cluster (None: ``metrics.shared_tau``)."""
    fit_steps: Annotated[int, Field(ge=1)] = 500
    """Steps of the encoder fit (TopK at the seeds' mean L0, rounded; decoder fixed)."""
    fit_lr: Annotated[float, Field(gt=0)] = 0.01
    """Adam learning rate of the encoder fit (0.01 fits in 500 steps what 1e-3 does in 2000)."""
    split: bool = True
    """Also build consensus decoders from two disjoint halves of the seeds (needs >= 4 seeds)
    and measure how well the two agree."""


class StudyConfig(FrozenConfig):
    """A study: the base experiment (task, model, SAE training) plus a grid of SAE configurations.

    The grid expands into units; one unit is one batched training pass (same architecture,
    width, hook and transformer checkpoint) over every sparsity value and every seed.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "default"
    """Study name; the run store is runs/<name>/ unless --out is given."""
    transformer_run: str | None = "artifacts/default_model"
    """A trained model run to reuse if its task/model/train config matches; else the model is trained."""
    transformer_config: str | None = None
    """A model config YAML (relative to the study file) whose task/model/train this study uses."""
    language_model: LanguageModelSource | None = None
    """Read a language model's activations instead of the modular model (then ``transformer_run``,
    ``task``, ``model`` and ``train`` are unused, and loss recovered is not measured)."""
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sae_train: SAETrainConfig = SAETrainConfig()
    grid: Annotated[list[SweepConfig], Field(min_length=1)] = [SweepConfig()]
    """A list of grids whose units are all run (e.g. one per hook); a single mapping is one grid."""
    metrics: StudyMetricsConfig = StudyMetricsConfig()
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()
    consensus: ConsensusStudyConfig | None = None
    """Build a consensus SAE per configuration (None: none)."""
    device: Device = "cpu"
    """Where SAE units train (and a model the study trains): ``auto`` (CUDA when available),
    ``cpu`` or ``cuda`` (:mod:`husai.devices`). Units trained off the CPU get their own ids,
    so a store never mixes them with CPU-trained ones."""

    @field_validator("grid", mode="before")
    @classmethod
    def _one_grid_is_a_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _language_model_has_no_transformer(self) -> StudyConfig:
        if self.language_model is None:
            return self
        clash = [f for f in ("transformer_run", "transformer_config") if f in self.model_fields_set]
        clash = [f for f in clash if getattr(self, f) is not None]
        if clash:
            raise ValueError(
                f"language_model reads a language model's activations; remove {clash[0]} "
                "(it names a modular-arithmetic model)"
            )
        for grid in self.grids:
            for hook in grid.hooks:
                if language_model_layer(hook) is None:
                    raise ValueError(
                        f"grid.hooks: a language model study reads blocks.L.hook_resid_post, got {hook!r}"
                    )
            if list(grid.checkpoints) != ["final"]:
                raise ValueError(
                    f"grid.checkpoints: a language model has only 'final', got {list(grid.checkpoints)}"
                )
        return self

    @model_validator(mode="after")
    def _consensus_has_the_seeds(self) -> StudyConfig:
        if self.consensus is None:
            return self
        for g_idx, grid in enumerate(self.grids):
            seeds = grid.sae_train.get("init_seeds", self.sae_train.init_seeds)
            if self.consensus.min_seeds > len(seeds):
                raise ValueError(
                    f"consensus.min_seeds: expected at most {len(seeds)} (the seeds of grid.{g_idx}), "
                    f"got {self.consensus.min_seeds}"
                )
        return self

    @property
    def grids(self) -> list[SweepConfig]:
        return list(self.grid)

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(h for g in self.grids for h in g.hooks))

    @property
    def checkpoints(self) -> list[str]:
        return list(dict.fromkeys(c for g in self.grids for c in g.checkpoints))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
        return load_config(cls, path, overrides, preprocess=_inline_model_config)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def model_experiment(self) -> ExperimentConfig:
        """The ExperimentConfig that trains (or identifies) this study's transformer."""
        return ExperimentConfig(
            name=f"{self.name}-model",
            task=self.task,
            model=self.model,
            train=self.train,
            tracking=self.tracking,
            device=self.device,
        )


def language_model_layer(hook: str) -> int | None:
    """L of ``blocks.L.hook_resid_post``, else None."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook)
    return None if match is None else int(match.group(1))


CONFIG_KINDS: dict[str, type[ExperimentConfig] | type[StudyConfig]] = {
    "experiment": ExperimentConfig,
    "study": StudyConfig,
}


def load_any_config(
    path: str | Path, overrides: list[str] | None = None, kind: str = "auto"
) -> ExperimentConfig | StudyConfig:
    """An experiment or a study config; ``kind='auto'`` tells them apart by their keys."""
    path = Path(path)
    if kind == "auto":
        kind = config_kind(path, overrides or [])
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"--kind: expected auto, experiment or study, got {kind!r}")
    return CONFIG_KINDS[kind].from_yaml(path, overrides)


def config_kind(path: Path, overrides: list[str]) -> str:
    """'study' if the file (or an override) has a study-only key, else 'experiment'."""
    keys = set(read_mapping(path)) | {o.split("=", 1)[0].split(".")[0].strip() for o in overrides}
    exp_fields, study_fields = set(ExperimentConfig.model_fields), set(StudyConfig.model_fields)
    exp, study = (
        sorted(keys & (exp_fields - study_fields)),
        sorted(keys & (study_fields - exp_fields)),
    )
    if exp and study:
        raise ConfigError(
            f"{path}: <root>: expected an experiment config or a study config, got "
            f"experiment key(s) {exp} and study key(s) {study}"
        )
    return "study" if study else "experiment"
