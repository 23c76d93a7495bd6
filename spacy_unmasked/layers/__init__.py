"""Thinc layers of spacy-unmasked."""

from .model import UnmaskedTransformerModel
from .shim import UnmaskedShim

__all__ = ["UnmaskedShim", "UnmaskedTransformerModel"]
