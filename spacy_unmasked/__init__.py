"""spacy-unmasked: decoder LLMs with per-layer bidirectional attention for spaCy."""

from .masking import UnmaskHandle, resolve_layers, unmask
from .spec import UnmaskSpecError, group_bounds

__version__ = "0.1.0"

__all__ = ["UnmaskHandle", "UnmaskSpecError", "__version__", "group_bounds", "resolve_layers", "unmask"]
