"""Cutting tokenized documents into model-sized windows, and the rows they become.

Each document that is not blank is tokenized on its own (no special tokens) and cut into consecutive windows
of ``context - len(prefix) - len(suffix)`` text tokens; the last window of a document is
shorter, and no window crosses a document boundary. The model sees ``prefix + window +
suffix`` (e.g. BERT's ``[CLS] ... [SEP]``) and one activation row is kept per text token, in
text order: document, window, position. ``max_tokens`` stops after that many rows: the
last window is still read whole (a bidirectional model's activations depend on the tokens
after a row), and only its first rows are kept, so a shorter extraction is always a prefix
of a longer one.

A :class:`WindowPlan` is all extraction needs to know about the text: the windows, the rows'
token ids, window indices and positions, and a digest of it all that (with the model, layer
and context) keys a resumable extraction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from husai.errors import UserError
from husai.lm.models import LanguageModel
from husai.lm.text import Document


@dataclass(frozen=True)
class Window:
    """A run of one document's text tokens that the model reads in one sequence."""

    document: int
    offset: int  # index of its first token within the document's tokens
    ids: Int[Tensor, " t"]
    keep: int  # rows kept: its first ``keep`` tokens (all but, at most, in the last window)


@dataclass(frozen=True)
class WindowPlan:
    """Every window of the text and the rows (text tokens) they produce, in order."""

    documents: list[dict[str, object]]  # name and tokens used, per document
    windows: list[Window]
    prefix: list[int]
    suffix: list[int]

    @property
    def n_rows(self) -> int:
        return sum(w.keep for w in self.windows)

    def row_tensors(self) -> dict[str, Tensor]:
        """token_ids, sequences (window index) and positions (in the model's input) per row."""
        lengths = torch.tensor([w.keep for w in self.windows], dtype=torch.int64)
        sequences = torch.repeat_interleave(torch.arange(len(self.windows)), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(int(lengths.sum())) - starts[sequences] + len(self.prefix)
        token_ids = torch.cat([w.ids[: w.keep] for w in self.windows])
        return {"token_ids": token_ids, "sequences": sequences, "positions": positions}

    def window_tensors(self) -> dict[str, Tensor]:
        """Each window's document index and the offset of its first token in that document."""
        return {
            "window_document": torch.tensor([w.document for w in self.windows], dtype=torch.int64),
            "window_offset": torch.tensor([w.offset for w in self.windows], dtype=torch.int64),
        }

    def digest(self) -> str:
        """sha256 of the documents' names, the windows and every token id."""
        h = hashlib.sha256()
        h.update(repr((self.documents, self.prefix, self.suffix)).encode())
        for w in self.windows:
            h.update(f"{w.document}:{w.offset}:{len(w.ids)}:{w.keep};".encode())
            h.update(w.ids.numpy().tobytes())
        return h.hexdigest()

    def model_input(self, window: Window) -> Int[Tensor, " t"]:
        frame = (
            torch.tensor(self.prefix, dtype=torch.int64),
            torch.tensor(self.suffix, dtype=torch.int64),
        )
        return torch.cat([frame[0], window.ids, frame[1]])


def plan_windows(
    lm: LanguageModel, documents: Iterable[Document], context: int, max_tokens: int | None = None
) -> WindowPlan:
    """Tokenize ``documents`` and cut them into windows (see the module docstring)."""
    body = context - len(lm.prefix) - len(lm.suffix)
    if body < 1 or (lm.max_context is not None and context > lm.max_context):
        raise UserError(
            f"--context {context}: expected an integer in [{len(lm.prefix) + len(lm.suffix) + 1}, "
            f"{lm.max_context}] for {lm.name}"
        )
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"--max-tokens {max_tokens}: expected a positive integer")
    docs: list[dict[str, object]] = []
    windows: list[Window] = []
    left = max_tokens
    for doc in documents:
        if not doc.text.strip():  # whitespace only: byte-level tokenizers would keep it
            continue
        ids = lm.tokenize(doc.text)
        if len(ids) == 0:
            continue
        cut = list(_cut(len(docs), ids, body, left))
        windows.extend(cut)
        used = sum(w.keep for w in cut)
        docs.append({"name": doc.name, "n_tokens": used})
        if left is not None:
            left -= used
            if left == 0:
                break
    if not windows:
        raise UserError("--text: the text is empty (no tokens)")
    return WindowPlan(docs, windows, list(lm.prefix), list(lm.suffix))


def _cut(document: int, ids: Tensor, body: int, left: int | None) -> Iterator[Window]:
    """Windows of ``body`` tokens until the document or ``left`` rows run out."""
    for offset in range(0, len(ids), body):
        window = ids[offset : offset + body].clone()
        keep = len(window) if left is None else min(len(window), left - offset)
        yield Window(document, offset, window, keep)
        if keep < len(window) or (left is not None and offset + keep >= left):
            return
