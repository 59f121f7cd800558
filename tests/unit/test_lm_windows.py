"""Text sources and windows of ``husai extract-lm``, with a character-level stand-in model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from husai.errors import UserError
from husai.lm.text import PYDOC, Document, iter_documents
from husai.lm.windows import plan_windows


def _char_lm(prefix=(), suffix=(), max_context=None):
    """Tokens are the characters' code points; prefix/suffix play [CLS]/[SEP]."""
    return SimpleNamespace(
        name="chars",
        prefix=list(prefix),
        suffix=list(suffix),
        max_context=max_context,
        tokenize=lambda text: torch.tensor([ord(c) for c in text], dtype=torch.int64),
    )


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    context=st.integers(3, 12),
    framed=st.booleans(),
    max_tokens=st.none() | st.integers(1, 120),
)
def test_windows_cover_the_text_in_order_and_never_cross_documents(
    lengths, context, framed, max_tokens
):
    docs = [
        Document(f"d{i}", "".join(chr(97 + (i + j) % 26) for j in range(n)))
        for i, n in enumerate(lengths)
    ]
    lm = _char_lm(prefix=[1], suffix=[2]) if framed else _char_lm()
    if sum(lengths) == 0:
        with pytest.raises(UserError, match="empty"):
            plan_windows(lm, docs, context, max_tokens)
        return
    plan = plan_windows(lm, docs, context, max_tokens)
    text = "".join(d.text for d in docs)
    n = len(text) if max_tokens is None else min(len(text), max_tokens)
    rows = plan.row_tensors()
    assert plan.n_rows == n
    assert "".join(map(chr, rows["token_ids"].tolist())) == text[:n]
    body = context - (2 if framed else 0)
    for index, w in enumerate(plan.windows):
        assert 1 <= w.keep <= len(w.ids) <= body
        assert len(plan.model_input(w)) == len(w.ids) + (2 if framed else 0)
        assert w.keep == len(w.ids) or index == len(plan.windows) - 1  # only the last is cut
    named = {d.name: d.text for d in docs}
    for w in plan.windows:
        doc_text = named[plan.documents[w.document]["name"]]
        assert "".join(map(chr, w.ids.tolist())) == doc_text[w.offset : w.offset + len(w.ids)]
    first = 1 if framed else 0
    starts = rows["positions"] == first
    assert int(starts.sum()) == len(plan.windows)
    assert torch.equal(rows["sequences"][starts], torch.arange(len(plan.windows)))


def test_context_and_max_tokens_are_checked():
    docs = [Document("d", "abc")]
    with pytest.raises(UserError, match="--context 2"):
        plan_windows(_char_lm(prefix=[1], suffix=[2]), docs, 2)
    with pytest.raises(UserError, match="--context 9"):
        plan_windows(_char_lm(max_context=8), docs, 9)
    with pytest.raises(UserError, match="--max-tokens 0"):
        plan_windows(_char_lm(), docs, 4, max_tokens=0)


def test_blank_documents_are_skipped_and_a_blank_text_is_an_error():
    plan = plan_windows(_char_lm(), [Document("a", " \n"), Document("b", "xy")], 4)
    assert [d["name"] for d in plan.documents] == ["b"]
    with pytest.raises(UserError, match="empty"):
        plan_windows(_char_lm(), [Document("a", " \n\t")], 4)


def test_digest_changes_with_any_token():
    a = plan_windows(_char_lm(), [Document("d", "abcdef")], 4)
    b = plan_windows(_char_lm(), [Document("d", "abcdeg")], 4)
    c = plan_windows(_char_lm(), [Document("d", "abcdef")], 4)
    assert a.digest() == c.digest() != b.digest()


def test_directories_give_their_text_files_in_sorted_order(tmp_path):
    (tmp_path / "z.txt").write_text("z")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("a")
    (tmp_path / "b.py").write_text("skipped: not a text suffix")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.txt").write_text("hidden")
    named = tmp_path / "b.py"
    docs = list(iter_documents([tmp_path, named]))
    assert [d.text for d in docs] == ["a", "z", "skipped: not a text suffix"]


def test_pydoc_is_cpythons_help_text_and_bad_paths_are_one_line(tmp_path):
    docs = list(iter_documents([PYDOC]))
    assert len(docs) > 50 and sum(len(d.text) for d in docs) > 100_000
    assert [d.name for d in docs] == sorted(d.name for d in docs)
    with pytest.raises(UserError, match="no such file"):
        list(iter_documents([tmp_path / "missing.txt"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no text files"):
        list(iter_documents([tmp_path / "empty"]))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8"):
        list(iter_documents([tmp_path / "bad.txt"]))
