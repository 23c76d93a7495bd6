"""spacy-unmasked: decoder LLMs with per-layer bidirectional attention for spaCy.

Names that need torch load on first use, so that spaCy's CLI, which imports
this package for its ``ray-apply`` command, starts without loading torch."""

from importlib import import_module
from typing import Any

from .about import __version__
from .errors import (
    AnnotationInputError,
    BaseModelMismatchError,
    BaseModelNotFoundError,
    PipelineFormatError,
    PipelineLoadError,
    QuantizationUnavailableError,
    UnmaskingNotEffectiveError,
    UnmaskSpecError,
    UnsupportedModelError,
)
from .spec import group_bounds

_LAZY = {
    "UnmaskHandle": "masking",
    "resolve_layers": "masking",
    "unmask": "masking",
    "embed_base": "packaging",
}

__all__ = [
    "AnnotationInputError",
    "BaseModelMismatchError",
    "BaseModelNotFoundError",
    "PipelineFormatError",
    "PipelineLoadError",
    "QuantizationUnavailableError",
    "UnmaskHandle",
    "UnmaskSpecError",
    "UnmaskingNotEffectiveError",
    "UnsupportedModelError",
    "__version__",
    "embed_base",
    "group_bounds",
    "resolve_layers",
    "unmask",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
