"""Registered constructors of spacy-unmasked (``spacy-unmasked.*``).

Names are versioned and never change meaning: a new signature gets a new
version. These docstrings are the reference for the config surface.
"""

from collections.abc import Callable
from functools import partial

from spacy.tokens import Doc
from spacy.util import registry
from spacy_transformers.data_classes import FullTransformerBatch
from spacy_transformers.layers import split_trf_batch, trfs2arrays
from spacy_transformers.span_getters import get_strided_spans
from thinc.api import Model, chain
from thinc.types import Floats2d, Ragged

from .layers.model import TOK2VEC_ARCHITECTURE, UnmaskedTransformerModel
from .settings import LoRASettings, QuantizationSettings, Training, TransformerSettings


@registry.architectures("spacy-unmasked.UnmaskedTransformer.v2")
def create_unmasked_transformer_v2(
    name: str,
    *,
    revision: str | None = None,
    get_spans: Callable | None = None,
    unmask: str | list[int] | int = "all",  # int only to explain that 1111 needs quotes
    repeat: int = 0,
    lora: LoRASettings | None = None,
    quantization: QuantizationSettings | None = None,
    freeze_base: bool = False,
    torch_dtype: str = "auto",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    num_layers: int | None = None,
    max_length: int = 512,
    add_bos: bool = True,
    tokenizer_config: dict = {},
    transformer_config: dict = {},
    mixed_precision: bool = False,
    grad_scaler_config: dict = {},
) -> Model[list[Doc], FullTransformerBatch]:
    """A Hugging Face decoder whose chosen layers attend in both directions, and
    which may read its input more than once, as the model of spacy-transformers'
    ``transformer`` component.

    name: Hub id, local folder, or a ``.gguf`` file of a decoder of a supported
        family (``spacy_unmasked.families.SUPPORTED_FAMILIES``; docs/models.md).
    revision: Hub revision (branch, tag or commit) of ``name``.
    get_spans: Span getter; default: strided spans of 128 tokens, stride 96.
    unmask: Which layers lose the causal mask: "none", "all", a bit string over
        contiguous groups ("0011": leftmost bit = group nearest the input; when
        the layer count does not divide, the groups nearest the input are one
        layer larger), or a list of layer indices (negative from the top).
    repeat: Sequence repetition: each span's pieces are fed ``repeat + 1``
        times in one sequence (after one BOS) and tokens take the features of
        the last copy, which has seen the whole span (docs/repetition.md).
        0: no repetition. Spans are split so that all copies fit ``max_length``.
    lora: null, or a ``spacy-unmasked.LoRA.v1`` block. With LoRA only adapter
        weights train and only they are saved.
    quantization: null, or a ``spacy-unmasked.BitsAndBytes.v1`` block (needs
        LoRA or ``freeze_base``; runs on CUDA, and on CPU with bitsandbytes
        >= 0.50.2).
    freeze_base: Without LoRA: true keeps the base fixed (no gradients), false
        fine-tunes every weight (saved as safetensors shards).
    torch_dtype: "auto" (bfloat16 where the device computes it natively — CUDA
        GPUs since Ampere, CPUs with AVX512-BF16/AMX — unless the base is fully
        trained; float32 otherwise), "float32", "bfloat16" or "float16".
        LoRA adapters always stay float32.
    attn_implementation: "sdpa", "eager" or "flash_attention_2".
    gradient_checkpointing: Recompute activations in backward to save memory.
    num_layers: Run only the first ``num_layers`` decoder blocks (null: all):
        features from an intermediate layer. Cost falls in proportion;
        ``unmask`` then refers to the kept blocks.
    max_length: Most pieces per row, BOS and all copies included; longer spans are split.
    add_bos: Prepend the tokenizer's BOS token to every span (if it has one).
    tokenizer_config: Extra keyword arguments for ``AutoTokenizer.from_pretrained``
        (``use_fast = false`` loads a slow tokenizer; offsets are then computed here).
    transformer_config: Extra keyword arguments for ``AutoConfig.from_pretrained``;
        ``output_hidden_states`` / ``output_attentions`` (eager only) reach
        ``doc._.trf_data.model_output``.
    mixed_precision: fp16 autocast on CUDA (prefer torch_dtype = "bfloat16").
    grad_scaler_config: Arguments of thinc's ``PyTorchGradScaler``.
    """
    settings = TransformerSettings(
        name=str(name),
        revision=revision,
        unmask=list(unmask) if isinstance(unmask, (list, tuple)) else unmask,
        repeat=repeat,
        training=Training.from_config(lora=lora, freeze_base=freeze_base),
        lora=lora,
        quantization=quantization,
        torch_dtype=torch_dtype,
        attn_implementation=attn_implementation,
        gradient_checkpointing=gradient_checkpointing,
        num_layers=num_layers,
        max_length=max_length,
        add_bos=add_bos,
        tokenizer_config=dict(tokenizer_config),
        transformer_config=dict(transformer_config),
    )
    if get_spans is None:
        get_spans = partial(get_strided_spans, window=128, stride=96)
    return UnmaskedTransformerModel(
        settings, get_spans, mixed_precision=mixed_precision, grad_scaler_config=dict(grad_scaler_config)
    )


@registry.architectures("spacy-unmasked.UnmaskedTransformer.v1")
def create_unmasked_transformer(
    name: str,
    *,
    revision: str | None = None,
    get_spans: Callable | None = None,
    unmask: str | list[int] | int = "all",
    lora: LoRASettings | None = None,
    quantization: QuantizationSettings | None = None,
    freeze_base: bool = False,
    torch_dtype: str = "auto",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    num_layers: int | None = None,
    max_length: int = 512,
    add_bos: bool = True,
    tokenizer_config: dict = {},
    transformer_config: dict = {},
    mixed_precision: bool = False,
    grad_scaler_config: dict = {},
) -> Model[list[Doc], FullTransformerBatch]:
    """``spacy-unmasked.UnmaskedTransformer.v2`` without sequence repetition
    (``repeat = 0``); every other argument means the same."""
    return create_unmasked_transformer_v2(
        name,
        revision=revision,
        get_spans=get_spans,
        unmask=unmask,
        repeat=0,
        lora=lora,
        quantization=quantization,
        freeze_base=freeze_base,
        torch_dtype=torch_dtype,
        attn_implementation=attn_implementation,
        gradient_checkpointing=gradient_checkpointing,
        num_layers=num_layers,
        max_length=max_length,
        add_bos=add_bos,
        tokenizer_config=tokenizer_config,
        transformer_config=transformer_config,
        mixed_precision=mixed_precision,
        grad_scaler_config=grad_scaler_config,
    )


# The settings classes are registered as they are: their fields and docstrings
# are the config surface, and their defaults live in one place (settings.py).
create_lora = registry.misc("spacy-unmasked.LoRA.v1")(LoRASettings)
create_bitsandbytes = registry.misc("spacy-unmasked.BitsAndBytes.v1")(QuantizationSettings)


@registry.architectures(TOK2VEC_ARCHITECTURE)
def create_tok2vec_transformer(
    transformer: Model[list[Doc], FullTransformerBatch],
    pooling: Model[Ragged, Floats2d],
    grad_factor: float = 1.0,
) -> Model[list[Doc], list[Floats2d]]:
    """An unmasked transformer used directly as a component's tok2vec, pooled
    to one vector per token. ``nlp.replace_listeners`` writes this block in the
    place of a ``TransformerListener``, so that a component keeps a private copy
    of the transformer (e.g. to be sourced into another pipeline).

    transformer: A ``spacy-unmasked.UnmaskedTransformer.v1`` or ``.v2`` block.
    pooling: Reduction from pieces to tokens, e.g. ``reduce_mean.v1``.
    grad_factor: Scale of the gradient passed to the transformer.
    """
    return chain(chain(transformer, split_trf_batch()), trfs2arrays(pooling, grad_factor))
