"""Language models for extraction: a local ``transformers`` directory, the demo, or a TL name.

``--model`` is resolved in this order, and nothing is downloaded unless the user names a
hub model:

1. ``minilm``: the demo model of the ``lm`` extra (:mod:`husai.lm.demo`);
2. an existing directory: ``transformers.AutoModel.from_pretrained(dir)`` with its tokenizer;
3. a TransformerLens model name or alias (``gpt2``, ``pythia-70m``):
   ``HookedTransformer.from_pretrained`` (downloads unless cached, like TL itself);
4. ``hf:ORG/NAME``: ``AutoModel.from_pretrained`` by hub name (downloads unless cached).

Anything else, a directory that does not load, or a load that fails for want of a network
is one UserError line. Every model reads the same quantity: the residual stream after block
``L`` (0-based), named with TransformerLens' hook ``blocks.L.hook_resid_post``. For a
``transformers`` model it is the output of the L-th module of the model's list of blocks
(the ``nn.ModuleList`` as long as ``config.num_hidden_layers``), read by a forward hook that
also stops the forward pass there, so later blocks cost nothing. It is not
``hidden_states[L + 1]`` for the last block of models such as GPT-2, whose final hidden
state has the final LayerNorm applied. For a TransformerLens model it is
``forward(stop_at_layer=L + 1)``. Both run in float32 in eval mode.

``prefix`` and ``suffix`` are the special tokens a model expects around each window (BERT's
``[CLS]``/``[SEP]``; TL's BOS where ``default_prepend_bos``); their activations are not kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from husai.devices import resolve_device
from husai.errors import UserError
from husai.io import sha256_tensors
from husai.lm.demo import DEMO_MODEL, minilm_dir

log = logging.getLogger(__name__)
HUB_PREFIX = "hf:"


@dataclass
class LanguageModel:
    """A loaded model with what extraction needs; ``residual`` does the forward pass."""

    name: str
    source: str  # "transformers" or "transformer_lens"
    module: nn.Module
    tokenizer: Any
    n_layers: int
    d_model: int
    max_context: int | None
    prefix: list[int]
    suffix: list[int]
    sha256: str
    blocks: nn.ModuleList | None = None

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_resid_post"

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise UserError(
                f"--layer {layer}: {self.name} has {self.n_layers} blocks; "
                f"expected an integer in [0, {self.n_layers - 1}]"
            )
        return layer

    def tokenize(self, text: str) -> Int[Tensor, " t"]:
        """Token ids of ``text`` without special tokens (int64)."""
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.int64)

    @torch.no_grad()
    def residual(self, ids_BT: Int[Tensor, "b t"], layer: int) -> Float[Tensor, "b t d"]:
        """The residual stream after block ``layer`` for every position (float32)."""
        device = next(self.module.parameters()).device
        ids_BT = ids_BT.to(device)
        if self.blocks is None:  # TransformerLens
            out = self.module(ids_BT, stop_at_layer=layer + 1)
        else:
            out = _run_to_block(self.module, self.blocks[layer], ids_BT)
        return out.float()


class _Stop(Exception):
    """Raised by the block hook to end the forward pass once block L has run."""

    def __init__(self, output: Tensor) -> None:
        self.output = output


def _run_to_block(model: nn.Module, block: nn.Module, ids_BT: Tensor) -> Tensor:
    def stop(_module: nn.Module, _inputs: Any, output: Any) -> None:
        raise _Stop(output[0] if isinstance(output, tuple) else output)

    handle = block.register_forward_hook(stop)
    try:
        model(input_ids=ids_BT)
    except _Stop as stopped:
        return stopped.output
    finally:
        handle.remove()
    raise RuntimeError(f"{type(model).__name__}: the forward pass never reached the hooked block")


def load_language_model(name: str, device: str = "cpu") -> LanguageModel:
    """Resolve ``--model`` (see the module docstring) and load it on ``device``."""
    dev = resolve_device(device)
    if name == DEMO_MODEL:
        return _load_transformers(str(minilm_dir()), DEMO_MODEL, dev)
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise UserError(f"--model {name}: not a transformers model directory (no config.json)")
        return _load_transformers(name, name, dev)
    if name.startswith(HUB_PREFIX):
        return _load_transformers(name.removeprefix(HUB_PREFIX), name, dev)
    official = _official_tl_name(name)
    if official is None:
        raise UserError(
            f"--model {name}: not '{DEMO_MODEL}', a model directory, a TransformerLens model "
            f"name (e.g. gpt2, pythia-70m) or {HUB_PREFIX}ORG/NAME"
        )
    return _load_transformer_lens(official, name, dev)


def _load_transformers(where: str, name: str, device: torch.device) -> LanguageModel:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its weight-loading bar would sit beside ours
    try:
        model = AutoModel.from_pretrained(where, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise UserError(f"--model {name}: cannot load ({_first_line(err)})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model = model.to(device).eval()
    config = model.config
    n_layers = int(config.num_hidden_layers)
    blocks = _block_list(model, n_layers)
    if blocks is None:
        raise UserError(
            f"--model {name}: found no list of {n_layers} blocks in {type(model).__name__}"
        )
    prefix, suffix = _special_frame(tokenizer)
    return LanguageModel(
        name=name,
        source="transformers",
        module=model,
        tokenizer=tokenizer,
        n_layers=n_layers,
        d_model=int(config.hidden_size),
        max_context=getattr(config, "max_position_embeddings", None),
        prefix=prefix,
        suffix=suffix,
        sha256=_weights_sha256(model),
        blocks=blocks,
    )


def _block_list(model: nn.Module, n_layers: int) -> nn.ModuleList | None:
    """The first ``nn.ModuleList`` of ``n_layers`` modules: the transformer blocks."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    return None


def _special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text's own tokens."""
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(framed) - len(probe) + 1):
        if framed[start : start + len(probe)] == probe:
            return list(framed[:start]), list(framed[start + len(probe) :])
    return [], []


def _official_tl_name(name: str) -> str | None:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _load_transformer_lens(official: str, name: str, device: torch.device) -> LanguageModel:
    from transformer_lens import HookedTransformer

    try:
        model = HookedTransformer.from_pretrained(official, device=str(device))
    except (OSError, ValueError) as err:
        raise UserError(f"--model {name}: cannot load {official} ({_first_line(err)})") from None
    return wrap_hooked_transformer(model.eval(), name)


def wrap_hooked_transformer(model: Any, name: str) -> LanguageModel:
    """A loaded ``HookedTransformer`` (with a tokenizer) as a :class:`LanguageModel`."""
    if model.tokenizer is None:
        raise UserError(f"--model {name}: the TransformerLens model has no tokenizer")
    bos = model.tokenizer.bos_token_id
    prefix = [bos] if model.cfg.default_prepend_bos and bos is not None else []
    return LanguageModel(
        name=name,
        source="transformer_lens",
        module=model,
        tokenizer=model.tokenizer,
        n_layers=model.cfg.n_layers,
        d_model=model.cfg.d_model,
        max_context=model.cfg.n_ctx,
        prefix=prefix,
        suffix=[],
        sha256=_weights_sha256(model),
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _weights_sha256(model: nn.Module) -> str:
    """sha256 of the state dict (0-d buffers, such as TL's masks' fill value, included)."""
    return sha256_tensors(model.state_dict())
