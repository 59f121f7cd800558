"""The batched SAE and the architecture interface every SAE type implements.

A :class:`BatchedSAE` holds ``n_models`` SAEs of one architecture and width as stacked
tensors with a leading model dimension: ``W_enc [N, d_in, d_sae]``, ``b_enc [N, d_sae]``,
``W_dec [N, d_sae, d_in]``, ``b_dec [N, d_in]`` and, for JumpReLU-style inference,
``threshold [N, d_sae]``. The models differ in init seed and sparsity setting (k or a
penalty coefficient); per-model hyperparameters are tensors of shape ``[N]``.

An :class:`Architecture` holds everything about one SAE type, in that type's module:
its config class and sparsity knob, what the trainer must not know (the initial decoder
norm, whether decoder rows are kept at unit norm, the training forward pass with its
activation, sparsity penalty and auxiliary loss, the inference encoder) and how it is
saved in SAELens format. :mod:`husai.saes.registry` collects them by name. Every
per-model computation uses ops whose result for model i does not depend on the other
models (one 2-D matrix product per model, :func:`model_mm`; row-wise top-k, elementwise
ops, reductions over inner dimensions), which is what makes a batched run bit-identical
to training each model alone on any CPU and at any thread count;
``tests/unit/test_sae_trainer.py`` checks it.

Initialisation (Conerly et al. 2024, "Circuits Updates - April 2024"; Gao et al. 2024,
Sec. 2.4): decoder rows are random directions scaled to ``decoder_init_norm``, the
encoder is the decoder's transpose, biases start at zero. Each model draws from its
own ``torch.Generator`` seeded by its init seed, so a model's init does not depend on
the group it is trained in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from husai.saes.config_base import SAEConfigBase


class TrainOut(NamedTuple):
    """What one training forward pass returns (per model unless stated)."""

    losses: dict[str, Tensor]
    """Loss terms, each ``[N]``; the trainer minimises their sum."""
    fired_NS: Tensor
    """bool ``[N, d_sae]``: latent fired at least once in this batch."""
    l0_N: Tensor
    """Mean number of active latents per sample, ``[N]`` (detached)."""


class Architecture:
    """Base class of an SAE architecture acting on a :class:`BatchedSAE`.

    Subclasses set the class attributes and implement :meth:`train_forward` and
    :meth:`encode`; ``cfgs`` holds one SAE config per model.
    """

    name: ClassVar[str] = ""
    """Registry name; the ``arch`` field of :attr:`config_class` defaults to it."""
    config_class: ClassVar[type[SAEConfigBase]] = SAEConfigBase
    """The pydantic config of one SAE of this architecture."""
    sparsity_name: ClassVar[str] = ""
    """The config field that sets sparsity (k or a penalty coefficient); a study grid
    sweeps the field of the same name."""
    normalize_decoder: ClassVar[bool] = False
    decoder_init_norm: ClassVar[float] = 0.1
    has_threshold_param: ClassVar[bool] = False
    resamples_dead: ClassVar[bool] = False
    """Whether ``sae_train.resample_dead_at`` resamples this architecture's dead latents
    (``husai.saes.resample``; its authors' remedy for L1 SAEs, where TopK uses AuxK)."""
    saelens_architecture: ClassVar[str] = "standard"
    """The SAELens architecture it is saved as: 'standard', 'topk' or 'jumprelu' (then the
    threshold tensor is saved too)."""
    saelens_reads: ClassVar[tuple[str, ...]] = ()
    """SAELens architectures that load as this one when their cfg.json has no ``husai``
    section (at most one registered architecture reads each)."""

    def saelens_fields(self, cfg: Any) -> dict[str, Any]:
        """Top-level cfg.json fields SAELens needs for this architecture (e.g. topk's k)."""
        return {}

    def husai_fields(self, cfg: Any) -> dict[str, Any]:
        """Fields added to the ``husai`` section of cfg.json (e.g. Matryoshka's prefixes)."""
        return {}

    def __init__(self, cfgs: list[Any]) -> None:
        self.cfgs = list(cfgs)

    def hp(self, name: str, dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-model hyperparameter ``name`` as a ``[N]`` tensor."""
        return torch.tensor([getattr(c, name) for c in self.cfgs], dtype=dtype)

    def sparsity(self, cfg: Any) -> float:
        """The value of the sparsity knob (k or a coefficient) of one config."""
        return float(getattr(cfg, self.sparsity_name))

    def init_extra(self, cfg: Any, d_sae: int) -> dict[str, Tensor]:
        """Extra per-model parameters or buffers (e.g. thresholds), without the N dim."""
        return {}

    def train_forward(self, sae: BatchedSAE, x_NBD: Tensor, dead_NS: Tensor) -> TrainOut:
        raise NotImplementedError

    def encode(self, sae: BatchedSAE, x_NBD: Tensor) -> Tensor:
        """Inference codes ``[N, B, d_sae]`` for inputs ``[N, B, d_in]``."""
        raise NotImplementedError

    def after_step(self, sae: BatchedSAE, out: TrainOut, step: int, active_N: Tensor) -> None:
        """Update non-gradient state of the ``active_N`` models (e.g. a threshold) after a step."""


@dataclass
class BatchedSAE:
    """``n_models`` SAEs of one architecture and width, stacked on a leading dimension."""

    arch: Architecture
    params: dict[str, Tensor]
    """Trainable tensors: W_enc, b_enc, W_dec, b_dec (+ threshold for jumprelu)."""
    buffers: dict[str, Tensor] = field(default_factory=dict)
    """Non-trainable state (e.g. the BatchTopK inference threshold)."""

    @property
    def W_enc(self) -> Tensor:
        return self.params["W_enc"]

    @property
    def b_enc(self) -> Tensor:
        return self.params["b_enc"]

    @property
    def W_dec(self) -> Tensor:
        return self.params["W_dec"]

    @property
    def b_dec(self) -> Tensor:
        return self.params["b_dec"]

    @property
    def threshold(self) -> Tensor | None:
        return self.params.get("threshold", self.buffers.get("threshold"))

    @property
    def n_models(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[2]

    def _expand(self, x: Tensor) -> Tensor:
        return x.expand(self.n_models, *x.shape) if x.dim() == 2 else x

    def pre_acts(self, x_NBD: Tensor) -> Float[Tensor, "N B S"]:
        """Encoder pre-activations ``(x - b_dec) W_enc + b_enc`` (SAELens 'standard')."""
        x_in_NBD = self._expand(x_NBD) - self.b_dec[:, None, :]
        return model_mm(x_in_NBD, self.W_enc, self.b_enc)

    @torch.no_grad()
    def encode(self, x_BD: Float[Tensor, "B D"] | Float[Tensor, "N B D"]) -> Float[Tensor, "N B S"]:
        """Inference codes of every model for shared ``[B, d_in]`` or per-model inputs."""
        return self.arch.encode(self, self._expand(x_BD))

    @torch.no_grad()
    def decode(self, codes_NBS: Float[Tensor, "N B S"]) -> Float[Tensor, "N B D"]:
        """Reconstruction ``codes W_dec + b_dec`` of every model."""
        return model_mm(codes_NBS, self.W_dec, self.b_dec)

    @torch.no_grad()
    def forward(self, x_BD: Float[Tensor, "B D"]) -> Float[Tensor, "N B D"]:
        return self.decode(self.encode(x_BD))

    def to(self, device: torch.device) -> BatchedSAE:
        """This group with its tensors on ``device`` (itself when they are there already)."""
        if self.W_enc.device == device:
            return self
        params = {k: v.to(device) for k, v in self.params.items()}
        return BatchedSAE(self.arch, params, {k: v.to(device) for k, v in self.buffers.items()})

    def select(self, index: int) -> BatchedSAE:
        """A one-model BatchedSAE (copies) holding model ``index``."""
        arch = type(self.arch)([self.arch.cfgs[index]])
        params = {k: v[index : index + 1].detach().clone() for k, v in self.params.items()}
        buffers = {k: v[index : index + 1].clone() for k, v in self.buffers.items()}
        return BatchedSAE(arch, params, buffers)


def init_models(arch: Architecture, d_in: int, seeds: list[int]) -> BatchedSAE:
    """Initialise one model per (config, seed) pair, each from its own generator."""
    per_model: list[dict[str, Tensor]] = []
    for cfg, seed in zip(arch.cfgs, seeds, strict=True):
        gen = torch.Generator().manual_seed(int(seed))
        W_dec_SD = torch.randn(cfg.d_sae, d_in, generator=gen)
        W_dec_SD = W_dec_SD / W_dec_SD.norm(dim=-1, keepdim=True) * arch.decoder_init_norm
        tensors = {
            "W_enc": W_dec_SD.T.contiguous(),
            "b_enc": torch.zeros(cfg.d_sae),
            "W_dec": W_dec_SD,
            "b_dec": torch.zeros(d_in),
            **arch.init_extra(cfg, cfg.d_sae),
        }
        per_model.append(tensors)
    stacked = {k: torch.stack([m[k] for m in per_model]) for k in per_model[0]}
    param_names = {"W_enc", "b_enc", "W_dec", "b_dec"} | (
        {"threshold"} if arch.has_threshold_param else set()
    )
    params = {k: v for k, v in stacked.items() if k in param_names}
    buffers = {k: v for k, v in stacked.items() if k not in param_names}
    return BatchedSAE(arch, params, buffers)


def _stable_layout(t_NXY: Tensor) -> bool:
    """Whether every model's slice ``t[n]`` starts 64-byte aligned whatever n is (BLAS may
    take another code path, another summation order, for misaligned operands). Decided
    from the per-model stride and the base address only, so a model alone (N = 1) and the
    same model in a group get the same answer."""
    per_model_bytes = t_NXY.stride(0) * t_NXY.element_size()
    return per_model_bytes % 64 == 0 and t_NXY.data_ptr() % 64 == 0


def _operands(t_NXY: Tensor) -> list[Tensor]:
    """The 2-D slices of ``t``, copied to fresh (aligned, contiguous) memory unless the
    layout is stable; either way a model sees the same layout alone and in a group."""
    if _stable_layout(t_NXY):
        return list(t_NXY.unbind(0))
    return [t.clone(memory_format=torch.contiguous_format) for t in t_NXY.unbind(0)]


def _mm_into(out_NXZ: Tensor, A_NXY: Tensor, B_NYZ: Tensor) -> Tensor:
    direct = _stable_layout(out_NXZ)
    for n, (a, b) in enumerate(zip(_operands(A_NXY), _operands(B_NYZ), strict=True)):
        if direct:
            torch.mm(a, b, out=out_NXZ[n])
        else:
            out_NXZ[n].copy_(torch.mm(a, b))
    return out_NXZ


def per_model_mm(A_NXY: Tensor, B_NYZ: Tensor) -> Tensor:
    """``A[n] @ B[n]`` for every model without autograd, one 2-D ``mm`` per model (the calls
    :class:`ModelMM` makes); A may be an expanded view shared by all models. CPU only."""
    return _mm_into(A_NXY.new_empty(B_NYZ.shape[0], A_NXY.shape[1], B_NYZ.shape[2]), A_NXY, B_NYZ)


class ModelMM(torch.autograd.Function):
    """``A[n] @ B[n]`` for every model n, one 2-D ``mm`` per model, forward and backward.

    A batched ``bmm`` is not bit-stable across group sizes: for N = 1 it is one GEMM that
    MKL may split along the reduction dimension over threads, for N >= 2 it parallelises
    over the batch and each GEMM runs whole (measured: ``codes [512 x 1024] @ W_dec`` at 2
    threads differed by up to 3.8e-5 between N = 1 and N = 2). One ``mm`` per model runs
    exactly the call a model trained alone runs, whatever the group.
    """

    @staticmethod
    def forward(ctx: Any, A_NXY: Tensor, B_NYZ: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(A_NXY, B_NYZ)
        return per_model_mm(A_NXY, B_NYZ)

    @staticmethod
    def backward(ctx: Any, g_NXZ: Tensor):  # type: ignore[override]
        A_NXY, B_NYZ = ctx.saved_tensors
        g_NXZ = g_NXZ.contiguous()
        dA = dB = None
        if ctx.needs_input_grad[0]:
            dA = per_model_mm(g_NXZ, B_NYZ.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            dB = per_model_mm(A_NXY.transpose(1, 2), g_NXZ)
        return dA, dB


def on_accelerator(sae: BatchedSAE) -> bool:
    """Whether the group's tensors are off the CPU (dense, batched kernels there)."""
    return sae.W_enc.device.type != "cpu"


def model_mm(A_NXY: Tensor, B_NYZ: Tensor, bias_NZ: Tensor | None = None) -> Tensor:
    """``A[n] @ B[n] (+ bias[n])`` per model (see :class:`ModelMM`); A may be an expanded
    view shared by all models. Off the CPU one batched ``bmm`` (a GPU's batched GEMM does
    not split the reduction by group size the way the CPU's BLAS threads do, and ~100
    small kernel launches per step would cost more than the products)."""
    if B_NYZ.device.type != "cpu":
        out_NXZ = torch.bmm(A_NXY, B_NYZ)
        return out_NXZ if bias_NZ is None else out_NXZ.add_(bias_NZ[:, None, :])
    out_NXZ = ModelMM.apply(A_NXY, B_NYZ)
    return out_NXZ if bias_NZ is None else out_NXZ.add_(bias_NZ[:, None, :])


def per_model_mv(A_NDS: Tensor, v_NS: Tensor) -> Tensor:
    """``A[n] @ v[n]`` for each model, one matrix-vector product per model: a batched
    ``bmm`` of [N, D, S] @ [N, S, 1] gave different bits for N = 1 and N > 1 (MKL picks a
    different kernel), which broke batched == alone at d_sae 1024. Off the CPU one ``bmm``."""
    if A_NDS.device.type != "cpu":
        return torch.bmm(A_NDS, v_NS[:, :, None])[:, :, 0]
    return torch.stack(
        [torch.mv(a, v) for a, v in zip(_operands(A_NDS), v_NS.unbind(0), strict=True)]
    )


def mse_per_model(recon_NBD: Tensor, x_NBD: Tensor) -> Tensor:
    """Squared error summed over d_in, averaged over the batch: ``[N]``."""
    return (recon_NBD - x_NBD).pow(2).sum(-1).mean(-1)
