"""Helpers for shipping pipelines."""

from spacy.language import Language

from .layers.shim import UnmaskedShim


def transformer_shims(nlp: Language) -> list[UnmaskedShim]:
    """The spacy-unmasked shims of every component of ``nlp``."""
    shims = []
    for _, component in nlp.pipeline:
        model = getattr(component, "model", None)
        if model is not None and hasattr(model, "walk"):
            shims.extend(s for node in model.walk() for s in node.shims if isinstance(s, UnmaskedShim))
    return shims


def embed_base(nlp: Language) -> Language:
    """Store the base model's weights with the pipeline on its next save, so
    that it loads without the base (e.g. a self-contained ``spacy package``)."""
    shims = transformer_shims(nlp)
    if not shims:
        raise ValueError("This pipeline has no spacy-unmasked transformer whose base could be embedded.")
    for shim in shims:
        shim.embed_base = True
    return nlp
