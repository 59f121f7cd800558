"""How the LM report writes a snippet: WordPiece pieces glued, byte-level BPE as is."""

from __future__ import annotations

from husai.report.sections_lm import join_tokens


def test_wordpiece_pieces_continue_their_word_and_the_mark_keeps_its_piece() -> None:
    tokens = ["the", "static", "##met", "##ho", "##d", "call", "\n"]
    assert join_tokens(tokens, 3, spaced=False) == "the staticmet«ho»d call ⏎"
    assert join_tokens(tokens, 0, spaced=False) == "«the» staticmethod call ⏎"


def test_byte_level_tokens_carry_their_own_spaces() -> None:
    tokens = ["The", " quick", " brown", "\n", "fox"]
    assert join_tokens(tokens, 2, spaced=True) == "The quick« brown»⏎fox"
