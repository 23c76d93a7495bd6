"""spacy-unmasked: decoder LLMs with per-layer bidirectional attention for spaCy."""

from .about import __version__
from .masking import UnmaskHandle, resolve_layers, unmask
from .packaging import embed_base
from .spec import UnmaskSpecError, group_bounds

__all__ = ["UnmaskHandle", "UnmaskSpecError", "__version__", "embed_base", "group_bounds", "resolve_layers", "unmask"]
