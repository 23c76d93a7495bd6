"""The ``unmasked_transformer`` component: spacy-transformers' ``transformer``
component, saved as a folder of files (settings, tokenizer, safetensors) so
that fully fine-tuned 7B weights never pass through one msgpack blob.

spacy-transformers' own ``transformer`` factory works with the same model too;
it stores the same files packed into msgpack entries, which suits LoRA and
frozen bases (a few MB) but not full fine-tuning of large models.
"""

from collections.abc import Callable, Iterable
from pathlib import Path

import srsly
from spacy import util
from spacy.language import Language
from spacy.tokens import Doc
from spacy_transformers.data_classes import FullTransformerBatch, TransformerData
from spacy_transformers.pipeline_component import DOC_EXT_ATTR, Transformer
from thinc.api import Model

from .layers.shim import UnmaskedShim


@Language.factory(
    "unmasked_transformer",
    assigns=[f"doc._.{DOC_EXT_ATTR}"],
    default_config={
        "set_extra_annotations": {"@annotation_setters": "spacy-transformers.null_annotation_setter.v1"},
        "max_batch_items": 4096,
    },
)
def make_unmasked_transformer(
    nlp: Language,
    name: str,
    model: Model[list[Doc], FullTransformerBatch],
    set_extra_annotations: Callable[[list[Doc], FullTransformerBatch], None],
    max_batch_items: int,
) -> "UnmaskedTransformer":
    """A ``transformer`` component for ``spacy-unmasked.UnmaskedTransformer.v1``
    models that saves its model as a folder of files."""
    return UnmaskedTransformer(nlp.vocab, model, set_extra_annotations, max_batch_items=max_batch_items, name=name)


class UnmaskedTransformer(Transformer):
    """spacy-transformers' Transformer with folder-based model serialization."""

    @property
    def _shim(self) -> UnmaskedShim:
        shim = self.model.shims[0] if self.model.shims else None
        if not isinstance(shim, UnmaskedShim):
            raise ValueError(
                "The unmasked_transformer component needs a spacy-unmasked.UnmaskedTransformer model; "
                'use factory = "transformer" for other architectures.'
            )
        return shim

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> None:
        """Save cfg, vocab and the model folder."""
        serialize = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "vocab": lambda p: self.vocab.to_disk(p),
            "model": lambda p: self._shim.save(p),
        }
        util.to_disk(path, serialize, exclude)

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> "UnmaskedTransformer":
        """Load cfg, vocab and the model folder (loading the base model)."""

        def load_model(p: Path) -> None:
            self._shim.load(p)
            self.model.set_dim("nO", self._shim.hidden_size)

        deserialize = {
            "vocab": self.vocab.from_disk,
            "cfg": lambda p: self.cfg.update(srsly.read_json(p)),
            "model": load_model,
        }
        util.from_disk(path, deserialize, exclude)
        return self


@Language.factory("unmasked_release_features")
def make_release_features(nlp: Language, name: str) -> Callable[[Doc], Doc]:
    """A last component that frees ``doc._.trf_data`` (hidden states, pieces and
    alignment) once the listeners have used it, so processed docs stay small."""
    return release_features


def release_features(doc: Doc) -> Doc:
    """Replace the doc's transformer data with an empty record."""
    if Doc.has_extension(DOC_EXT_ATTR):
        doc._.trf_data = TransformerData.empty()
    return doc
