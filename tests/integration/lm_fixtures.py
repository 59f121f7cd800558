"""Language-model fixtures: a small text corpus and a tiny random GPT-2 saved locally (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DOCS = {
    "a.txt": "The quick brown fox jumps over the lazy dog. " * 9,
    "b.md": "Sparse autoencoders learn features; do seeds agree on them? " * 5,
    "sub/c.rst": "Modular addition, grokked, with Fourier features. " * 3,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / ".hidden.txt").write_text("never read " * 50)
    (root / "image.png").write_bytes(b"\x89PNG\x00\xff")
    return root


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random GPT-2 and a byte-level BPE tokenizer, saved as a model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
    )
    bpe.train_from_iterator(list(DOCS.values()), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=len(tokenizer), n_inner=64
    )
    path = tmp_path_factory.mktemp("tiny_gpt2")
    GPT2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
