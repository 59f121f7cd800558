"""Language models: residual-stream activations over text, for the same SAE stability study.

``husai extract-lm`` (:func:`extract_lm`) reads a model (:mod:`husai.lm.models`: a local
``transformers`` directory, the offline demo MiniLM of :mod:`husai.lm.demo`, or a
TransformerLens name) over text (:mod:`husai.lm.text`), cut into windows
(:mod:`husai.lm.windows`), and writes a HUSAI activation directory with each row's token id
and position (:mod:`husai.lm.extract`). There is no ground truth here: the SAEs, metrics and
baselines are the same as on the modular-arithmetic model.
"""

from husai.lm.extract import extract_lm, extract_lm_from
from husai.lm.models import LanguageModel, load_language_model

__all__ = ["LanguageModel", "extract_lm", "extract_lm_from", "load_language_model"]
