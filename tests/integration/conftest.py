"""Fixtures shared by the integration tests (the language-model ones live in lm_fixtures)."""

from lm_fixtures import corpus, tiny_gpt2

__all__ = ["corpus", "tiny_gpt2"]
