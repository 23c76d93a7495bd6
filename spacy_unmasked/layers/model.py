"""The thinc model: docs → pieces → unmasked decoder → float32 features,
packed as spacy-transformers' ``FullTransformerBatch`` for its listeners."""

from collections.abc import Callable
from typing import Any

import torch
from spacy.tokens import Doc
from spacy_transformers.data_classes import FullTransformerBatch, TransformerData
from spacy_transformers.layers import split_trf_batch
from thinc.api import Model, chain
from thinc.types import ArgsKwargs
from transformers.modeling_outputs import BaseModelOutput

from ..batching import call_overhead, length_buckets
from ..pieces import encode_spans
from ..settings import TransformerSettings
from .shim import UnmaskedShim

TOK2VEC_ARCHITECTURE = "spacy-unmasked.Tok2VecTransformer.v1"


class UnmaskedTransformerModel(Model):
    """A thinc ``Model[List[Doc], FullTransformerBatch]`` around a Hugging Face
    decoder with unmasked layers. Like spacy-transformers' ``TransformerModel``
    it exposes ``.transformer`` and ``.tokenizer`` and supports
    ``nlp.replace_listeners``. The decoder loads on ``initialize`` or from disk."""

    __slots__ = ()

    def __init__(
        self,
        settings: TransformerSettings,
        get_spans: Callable,
        *,
        mixed_precision: bool = False,
        grad_scaler_config: dict | None = None,
    ):
        shim = UnmaskedShim(settings, mixed_precision=mixed_precision, grad_scaler_config=grad_scaler_config)
        super().__init__(
            "unmasked-transformer",
            forward,
            init=init,
            shims=[shim],
            dims={"nO": None},
            attrs={
                "get_spans": get_spans,
                "replace_listener": replace_listener,
                "replace_listener_cfg": replace_listener_cfg,
            },
        )

    @property
    def shim(self) -> UnmaskedShim:
        """The PyTorch shim that owns the decoder."""
        return self.shims[0]

    @property
    def transformer(self) -> torch.nn.Module | None:
        """The Hugging Face decoder (peft-wrapped with LoRA); None before initialization."""
        return self.shim.model

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer; None before initialization."""
        return self.shim.tokenizer

    @property
    def settings(self) -> TransformerSettings:
        """The typed settings this model was built with."""
        return self.shim.settings

    def _copy(self, seen=None):
        copied = super()._copy(seen)
        copied.__class__ = UnmaskedTransformerModel
        return copied


def replace_listener(model: Model) -> Model:
    """The model that takes a listener's place after ``nlp.replace_listeners``:
    the transformer with its batch split per doc."""
    return chain(model, split_trf_batch())


def replace_listener_cfg(tok2vec_model_cfg: dict[str, Any], listener_model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The config that takes a listener's place after ``nlp.replace_listeners``:
    the transformer's own block wrapped with the listener's pooling."""
    if "TransformerListener" not in listener_model_cfg.get("@architectures", ""):
        return dict(tok2vec_model_cfg)
    result = {"@architectures": TOK2VEC_ARCHITECTURE, "transformer": dict(tok2vec_model_cfg)}
    for key in ("pooling", "grad_factor"):
        if key in listener_model_cfg:
            result[key] = listener_model_cfg[key]
    return result


def init(model: UnmaskedTransformerModel, X: list[Doc] | None = None, Y=None) -> None:
    """Load the pretrained decoder (unless already loaded) and set ``nO``."""
    if not model.shim.is_loaded:
        model.shim.load_pretrained()
    model.set_dim("nO", model.shim.hidden_size)


def forward(model: UnmaskedTransformerModel, docs: list[Doc], is_train: bool) -> tuple[FullTransformerBatch, Callable]:
    """Encode docs, run the decoder, return float32 hidden states per span."""
    shim = model.shim
    if not shim.is_loaded:
        raise ValueError(
            "The unmasked transformer has no model loaded yet: call nlp.initialize() before using a new "
            "pipeline, or load a trained one with spacy.load()."
        )
    settings = shim.settings
    batch = encode_spans(
        shim.tokenizer,
        model.attrs["get_spans"](docs),
        max_length=settings.max_length,
        add_bos=settings.add_bos,
        repeat=settings.repeat,
    )
    if len(batch.wordpieces) == 0:
        return FullTransformerBatch.empty(len(docs)), lambda d_batch: docs
    device = shim.device
    input_ids = torch.from_numpy(batch.wordpieces.input_ids).to(device)
    attention_mask = torch.from_numpy(batch.wordpieces.attention_mask).to(device)
    trains = is_train and shim.trains
    call = shim.begin_update if trains else lambda inputs: (shim.predict(inputs), None)
    if shim.order_by_length:
        output, backprop_shim = _run_by_length(call, input_ids, attention_mask, batch.wordpieces.lengths, shim)
    else:
        output, backprop_shim = call(_decoder_inputs(input_ids, attention_mask))
    features = output.last_hidden_state.float()
    result = UnmaskedBatch(
        spans=batch.spans,
        wordpieces=batch.wordpieces,
        model_output=_model_output(features, output),
        align=batch.align,
    )

    def backprop(d_batch: FullTransformerBatch) -> list[Doc]:
        if trains:
            d_features = next(iter(d_batch.model_output.values())).to(features.device)
            _check_finite(d_features, "The gradient reaching the transformer")
            backprop_shim(ArgsKwargs(args=(features,), kwargs={"grad_tensors": (d_features,)}))
        return docs

    return result, backprop


def _decoder_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ArgsKwargs:
    return ArgsKwargs(args=(), kwargs={"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False})


def _run_by_length(
    call: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: list[int], shim: UnmaskedShim
) -> tuple[Any, Callable | None]:
    """Run the rows in decoder calls of similar length (see ``batching``), each cut
    to its longest row, and put the outputs back in row order at full width (zeros
    where a call had no padding to compute). Right padding is masked, so every row
    gets what one padded call gives it. ``call(inputs)`` returns the output and the
    shim's backprop (or None); the outputs of all calls join one autograd graph, so
    one backprop call reaches every call's weights."""
    buckets = length_buckets(lengths, max_items=shim.max_batch_items, overhead=call_overhead(input_ids.device))
    if len(buckets) == 1:
        return call(_decoder_inputs(input_ids, attention_mask))
    rows, width = input_ids.shape
    gathered: dict[tuple[str, int, bool], torch.Tensor] = {}
    backprop = None
    for bucket in buckets:
        index = torch.tensor(bucket, device=input_ids.device)
        cut = max(lengths[i] for i in bucket)
        output, backprop = call(_decoder_inputs(input_ids[index, :cut], attention_mask[index, :cut]))
        for field in ("last_hidden_state", "hidden_states", "attentions"):
            values = getattr(output, field, None)
            if values is None:
                continue
            many = isinstance(values, tuple)
            axes = (2, 3) if field == "attentions" else (1,)  # the sequence axes
            for k, value in enumerate(values if many else (values,)):
                shape = [rows, *(width if axis in axes else n for axis, n in enumerate(value.shape[1:], 1))]
                full = gathered.setdefault((field, k, many), value.new_zeros(shape))
                where = (index, *(slice(cut) if axis in axes else slice(None) for axis in range(1, value.dim())))
                full[where] = value
    result: dict[str, Any] = {}
    for (field, _, many), value in gathered.items():  # inserted in layer order
        result[field] = (*result.get(field, ()), value) if many else value
    return BaseModelOutput(**result), backprop


class UnmaskedBatch(FullTransformerBatch):
    """spacy-transformers' batch whose per-doc outputs (``doc._.trf_data``) keep
    Hugging Face's output class, so that fields not asked for read as None."""

    def split_by_doc(self) -> list[TransformerData]:
        """One ``TransformerData`` per doc, its ``model_output`` a ``BaseModelOutput``."""
        outputs = super().split_by_doc()
        for data in outputs:
            if "last_hidden_state" in data.model_output:
                data.model_output = BaseModelOutput(**data.model_output)
        return outputs


def _model_output(features: torch.Tensor, output) -> BaseModelOutput:
    """The decoder's output as float32 for thinc: the last hidden states, plus the
    hidden states of every layer and the attention weights when the config asks
    for them (``transformer_config``); fields not asked for read as None."""
    extra = {}
    for field in ("hidden_states", "attentions"):
        values = getattr(output, field, None)
        if values is not None:
            extra[field] = tuple(value.detach().float() for value in values)
    return BaseModelOutput(last_hidden_state=features, **extra)


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    """Stop training with a clear message on NaN or infinite values."""
    if not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(
            f"{what} hold NaN or infinite values, so training diverged. Lower the learning rate "
            "([training.optimizer.learn_rate]), keep grad_clip on, or train in float32; model-best "
            "still holds the last good checkpoint."
        )
