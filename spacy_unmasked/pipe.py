"""The ``unmasked_transformer`` component: spacy-transformers' ``transformer``
component, saved as a folder of files (settings, tokenizer, safetensors) so
that fully fine-tuned 7B weights never pass through one msgpack blob.

spacy-transformers' own ``transformer`` factory works with the same model too;
it stores the same files packed into msgpack entries, which suits LoRA and
frozen bases (a few MB) but not full fine-tuning of large models.
"""

import logging
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import srsly
from spacy import util
from spacy.language import Language
from spacy.tokens import Doc
from spacy_transformers.data_classes import FullTransformerBatch
from spacy_transformers.pipeline_component import DOC_EXT_ATTR, Transformer
from thinc.api import Model

from .layers.shim import UnmaskedShim
from .summary import describe, one_line

logger = logging.getLogger("spacy_unmasked")
META_KEY = "unmasked"


@Language.factory(
    "unmasked_transformer",
    assigns=[f"doc._.{DOC_EXT_ATTR}"],
    default_config={
        "set_extra_annotations": {"@annotation_setters": "spacy-transformers.null_annotation_setter.v1"},
        "max_batch_items": 4096,
        "merge_lora": True,
        "dequantize": True,
        "order_by_length": True,
    },
)
def make_unmasked_transformer(
    nlp: Language,
    name: str,
    model: Model[list[Doc], FullTransformerBatch],
    set_extra_annotations: Callable[[list[Doc], FullTransformerBatch], None],
    max_batch_items: int,
    merge_lora: bool,
    dequantize: bool,
    order_by_length: bool,
) -> "UnmaskedTransformer":
    """A ``transformer`` component for ``spacy-unmasked.UnmaskedTransformer`` (v1, v2)
    models that saves its model as a folder of files. ``merge_lora``: a loaded
    LoRA pipeline on an unquantized base merges its adapters into the base
    weights before its first prediction (faster; unmerged again if it trains).
    ``dequantize``: a loaded quantized pipeline predicts with its base
    dequantized to the compute dtype and its adapters folded in (faster, where
    memory allows; the quantized layers come back if it trains); false keeps
    predicting with the quantized base. ``order_by_length``: prediction runs the
    spans of a batch in decoder calls of similar piece length, at most
    ``max_batch_items`` padded pieces each (same outputs, less padding); false
    runs each batch as one call padded to its longest span."""
    component = UnmaskedTransformer(nlp.vocab, model, set_extra_annotations, max_batch_items=max_batch_items, name=name)
    component._nlp = weakref.ref(nlp)
    component._shim.merge.enabled = merge_lora
    component._shim.dequantize = dequantize
    component._shim.order_by_length = order_by_length
    component._shim.max_batch_items = max_batch_items
    return component


class UnmaskedTransformer(Transformer):
    """spacy-transformers' Transformer with folder-based model serialization.
    Once its decoder is loaded it states what it is in ``nlp.meta["unmasked"]``
    (base, unmask spec and layers, LoRA, quantization, dtype)."""

    _nlp: Callable[[], Language | None] = staticmethod(lambda: None)

    def initialize(self, get_examples: Callable, *, nlp: Language | None = None) -> None:
        """Load the base model with fresh adapters and find the listeners."""
        super().initialize(get_examples, nlp=nlp)
        self._describe(loaded=False)

    def describe(self) -> dict[str, Any]:
        """What this transformer is: base, unmask spec and layers, LoRA, quantization, dtype."""
        return describe(self._shim)

    def _describe(self, *, loaded: bool) -> None:
        summary = self.describe()
        nlp = self._nlp()
        if nlp is not None:
            nlp.meta[META_KEY] = summary
        if loaded:
            logger.info("Loaded %s", one_line(summary))

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
        """Save cfg, vocab and the model folder (empty before ``nlp.initialize()``)."""

        def save_model(p: Path) -> None:
            if self._shim.is_loaded:
                self._shim.save(p)
            else:
                Path(p).mkdir(parents=True, exist_ok=True)

        serialize = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "vocab": lambda p: self.vocab.to_disk(p),
            "model": save_model,
        }
        util.to_disk(path, serialize, exclude)

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> "UnmaskedTransformer":
        """Load cfg, vocab and the model folder (loading the base model)."""

        def load_model(p: Path) -> None:
            if Path(p).is_dir() and not any(Path(p).iterdir()):
                return  # saved before nlp.initialize(): stays uninitialized
            self._shim.load(p)
            self.model.set_dim("nO", self._shim.hidden_size)
            self._describe(loaded=True)

        deserialize = {
            "vocab": self.vocab.from_disk,
            "cfg": lambda p: self.cfg.update(srsly.read_json(p)),
            "model": load_model,
        }
        util.from_disk(path, deserialize, exclude)
        return self
