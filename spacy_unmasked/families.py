"""Model families and attention backends that unmasking supports.

All supported families share one structure, which unmasking relies on: a
``PreTrainedModel`` holding its decoder blocks in ``.layers``, each block with a
``self_attn`` module that has an ``is_causal`` flag and receives the attention
mask by keyword.
"""

from torch import nn

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3")
SUPPORTED_BACKENDS = ("eager", "sdpa", "flash_attention_2")


class UnsupportedModelError(ValueError):
    """A model, family or attention backend that cannot be unmasked."""


def check_family(config) -> None:
    """Raise if a Hugging Face config is not a supported decoder family."""
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"Model type {model_type!r} is not a supported decoder-only family. "
            f"Supported families: {', '.join(SUPPORTED_FAMILIES)}. Pick a checkpoint "
            "of one of these families."
        )


def check_backend(config) -> str:
    """Return the attention backend of a config, raising if it is unsupported."""
    backend = getattr(config, "_attn_implementation", None) or "eager"
    if backend not in SUPPORTED_BACKENDS:
        raise UnsupportedModelError(
            f"Attention backend {backend!r} is not supported. Supported backends: "
            f"{', '.join(SUPPORTED_BACKENDS)}; set attn_implementation to one of them."
        )
    return backend


def find_decoder(model: nn.Module) -> nn.Module:
    """Find the decoder stack (e.g. ``LlamaModel``) inside a bare, causal-LM or
    peft-wrapped model, checking its family and attention backend."""
    decoder: nn.Module | None = None
    for module in model.modules():
        config = getattr(module, "config", None)
        layers = getattr(module, "layers", None)
        if config is not None and isinstance(layers, nn.ModuleList):
            decoder = module
            break
    if decoder is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise UnsupportedModelError(
            f"No decoder layer stack found in {type(model).__name__} (model type "
            f"{model_type!r}). Supported families: {', '.join(SUPPORTED_FAMILIES)}."
        )
    check_family(decoder.config)
    check_backend(decoder.config)
    return decoder


def sliding_window(attention: nn.Module) -> int | None:
    """The sliding window of one attention module, or None for full attention."""
    if hasattr(attention, "sliding_window"):  # qwen2, qwen3, gemma2: per layer
        return attention.sliding_window
    return getattr(attention.config, "sliding_window", None)  # mistral, phi3: global
