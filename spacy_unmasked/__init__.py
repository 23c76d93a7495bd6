"""spacy-unmasked: decoder LLMs with per-layer bidirectional attention for spaCy."""

from .masking import UnmaskHandle, resolve_layers, unmask
from .spec import UnmaskSpecError, group_bounds

__version__ = "0.1.0"

__all__ = ["unmask", "resolve_layers", "group_bounds", "UnmaskHandle", "UnmaskSpecError", "__version__"]
