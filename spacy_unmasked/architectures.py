"""Registered constructors of spacy-unmasked (``spacy-unmasked.*``).

Names are versioned and never change meaning: a new signature gets a new
version. These docstrings are the reference for the config surface.
"""

from collections.abc import Callable
from functools import partial

from spacy.tokens import Doc
from spacy.util import registry
from spacy_transformers.data_classes import FullTransformerBatch
from spacy_transformers.span_getters import get_strided_spans
from thinc.api import Model

from .layers.model import UnmaskedTransformerModel
from .settings import LoRASettings, QuantizationSettings, TransformerSettings


@registry.architectures("spacy-unmasked.UnmaskedTransformer.v1")
def create_unmasked_transformer(
    name: str,
    *,
    revision: str | None = None,
    get_spans: Callable | None = None,
    unmask: str | list[int] | int = "all",  # int only to explain that 1111 needs quotes
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
    """A Hugging Face decoder whose chosen layers attend in both directions, as
    the model of spacy-transformers' ``transformer`` component.

    name: Hub id, local folder, or a ``.gguf`` file of a Llama, Mistral, Qwen2,
        Qwen3, Gemma2 or Phi3 decoder.
    revision: Hub revision (branch, tag or commit) of ``name``.
    get_spans: Span getter; default: strided spans of 128 tokens, stride 96.
    unmask: Which layers lose the causal mask: "none", "all", a bit string over
        contiguous groups ("0011": leftmost bit = group nearest the input; when
        the layer count does not divide, the groups nearest the input are one
        layer larger), or a list of layer indices (negative from the top).
    lora: null, or a ``spacy-unmasked.LoRA.v1`` block. With LoRA only adapter
        weights train and only they are saved.
    quantization: null, or a ``spacy-unmasked.BitsAndBytes.v1`` block (needs
        LoRA or ``freeze_base``).
    freeze_base: Without LoRA: true keeps the base fixed (no gradients), false
        fine-tunes every weight (saved as safetensors shards).
    torch_dtype: "auto" (bfloat16 on GPU unless the base is fully trained,
        float32 on CPU), "float32", "bfloat16" or "float16".
    attn_implementation: "sdpa", "eager" or "flash_attention_2".
    gradient_checkpointing: Recompute activations in backward to save memory.
    num_layers: Run only the first ``num_layers`` decoder blocks (null: all).
        Cost falls in proportion; ``unmask`` then refers to the kept blocks.
    max_length: Most pieces per span, BOS included; longer spans are split.
    add_bos: Prepend the tokenizer's BOS token to every span (if it has one).
    tokenizer_config: Extra keyword arguments for ``AutoTokenizer.from_pretrained``.
    transformer_config: Extra keyword arguments for ``AutoConfig.from_pretrained``.
    mixed_precision: fp16 autocast on CUDA (prefer torch_dtype = "bfloat16").
    grad_scaler_config: Arguments of thinc's ``PyTorchGradScaler``.
    """
    settings = TransformerSettings(
        name=str(name),
        revision=revision,
        unmask=list(unmask) if isinstance(unmask, (list, tuple)) else unmask,
        lora=lora,
        quantization=quantization,
        freeze_base=freeze_base,
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


@registry.misc("spacy-unmasked.LoRA.v1")
def create_lora(
    *, r: int = 64, alpha: int = 16, dropout: float = 0.1, target_modules: list[str] = ["q_proj", "v_proj"]
) -> LoRASettings:
    """LoRA adapters (peft): rank ``r``, scaling ``alpha``, ``dropout``, on the
    linear layers named in ``target_modules``. Defaults: the paper's recipe."""
    return LoRASettings(r=r, alpha=alpha, dropout=dropout, target_modules=tuple(target_modules))


@registry.misc("spacy-unmasked.BitsAndBytes.v1")
def create_bitsandbytes(
    *, bits: int = 4, quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "bfloat16"
) -> QuantizationSettings:
    """bitsandbytes quantization of the base: 4-bit (``quant_type`` nf4 or fp4,
    optional double quantization, ``compute_dtype``) or 8-bit. Defaults: QLoRA."""
    return QuantizationSettings(
        bits=bits, quant_type=quant_type, double_quant=double_quant, compute_dtype=compute_dtype
    )
