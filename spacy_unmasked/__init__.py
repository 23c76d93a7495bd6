"""spacy-unmasked: decoder LLMs with per-layer bidirectional attention for spaCy."""

from .about import __version__
from .errors import BaseModelMismatchError, BaseModelNotFoundError, PipelineFormatError, QuantizationUnavailableError
from .families import UnsupportedModelError
from .masking import UnmaskHandle, resolve_layers, unmask
from .packaging import embed_base
from .spec import UnmaskSpecError, group_bounds

__all__ = [
    "BaseModelMismatchError",
    "BaseModelNotFoundError",
    "PipelineFormatError",
    "QuantizationUnavailableError",
    "UnmaskHandle",
    "UnmaskSpecError",
    "UnsupportedModelError",
    "__version__",
    "embed_base",
    "group_bounds",
    "resolve_layers",
    "unmask",
]
