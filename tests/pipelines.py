"""Small spaCy pipelines on tiny models (re-exported from spacy_unmasked.testing)."""

from spacy_unmasked.testing import LISTENER, TRAIN, examples, lora, make_nlp, train, transformer_model

__all__ = ["LISTENER", "TRAIN", "examples", "lora", "make_nlp", "train", "transformer_model"]
