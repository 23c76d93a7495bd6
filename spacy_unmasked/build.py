"""The one recipe that builds the transformer, for a new pipeline
(``initialize``) and for a saved one (``spacy.load``): tokenizer and base
(dtype, device, quantization, attention backend) → training mode → LoRA →
unmask → a check that unmasking took effect. The decoder stack is found once
and the unmask spec resolved once per build."""

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase

from .errors import PipelineFormatError
from .families import check_family, find_decoder
from .folder import SavedTransformer
from .guard import verify_unmasking
from .hub import load_base_config, load_base_model, load_tokenizer
from .identity import base_identity, check_architecture, check_weights
from .lora import apply_lora
from .masking import UnmaskHandle, unmask_decoder
from .quantization import keep_4bit_layout
from .settings import Training, TransformerSettings
from .spec import resolve_spec


@dataclass
class BuiltTransformer:
    """A decoder ready for the pipeline, with its tokenizer, unmask handle and base identity."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    handle: UnmaskHandle
    base: dict[str, Any]


def build_transformer(
    settings: TransformerSettings, device: torch.device, *, saved: SavedTransformer | None = None
) -> BuiltTransformer:
    """Build the transformer: fresh LoRA adapters on the named base (``saved`` is
    None), or a saved pipeline's adapter or weights, its settings and base
    checked against those it was saved with."""
    stored_weights = saved.weights_dir if saved is not None else None
    if saved is not None:
        check_saved_settings(saved, settings)
    if stored_weights is None:
        config = load_base_config(settings)
    else:
        config = AutoConfig.from_pretrained(str(stored_weights), **settings.transformer_config)
        check_family(config)
    if saved is not None and stored_weights is None:
        check_architecture(saved.base, settings.name, config)
    if getattr(config, "output_attentions", False) and settings.attn_implementation != "eager":
        raise ValueError(
            f"transformer_config output_attentions needs attn_implementation = 'eager': "
            f"{settings.attn_implementation!r} computes no attention weights."
        )
    layers = resolve_spec(settings.unmask, config.num_hidden_layers)  # fail before loading any weights
    if saved is None:
        tokenizer = load_tokenizer(settings.name, revision=settings.revision, **settings.tokenizer_config)
    else:
        tokenizer = load_tokenizer(str(saved.tokenizer_dir), **settings.tokenizer_config)
    model = load_base_model(
        settings,
        device,
        config=config,
        source=str(stored_weights) if stored_weights else None,
        for_training=saved is None,
    )
    decoder = find_decoder(model)
    if saved is not None and stored_weights is not None:
        base = saved.base
    else:
        base = base_identity(settings, model, decoder)
        if saved is not None:
            check_weights(saved.base, base)
    if settings.training == Training.FROZEN:
        model.requires_grad_(False)
    elif settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.quantization is not None:
        keep_4bit_layout(model)
    if settings.training == Training.LORA:
        model = apply_lora(model, settings.lora, state=saved.adapter if saved is not None else None)
    handle = unmask_decoder(decoder, layers)
    verify_unmasking(model, handle.layers, decoder=decoder)  # one tiny forward pass: did unmasking take effect?
    return BuiltTransformer(model=model, tokenizer=tokenizer, handle=handle, base=base)


def check_saved_settings(saved: SavedTransformer, current: TransformerSettings) -> None:
    """Refuse a config whose settings would give the saved weights another meaning."""
    was_settings = saved.settings
    num_layers = was_settings.num_layers or saved.base["num_hidden_layers"]
    comparisons = {
        "unmask": (resolve_spec(was_settings.unmask, num_layers), resolve_spec(current.unmask, num_layers)),
        "lora": (was_settings.lora and was_settings.lora.shape, current.lora and current.lora.shape),
    }
    for key in ("training", "add_bos", "num_layers", "repeat"):
        comparisons[key] = (getattr(was_settings, key), getattr(current, key))
    for key, (was, now) in comparisons.items():
        if was != now:
            raise PipelineFormatError(
                f"The saved transformer was trained with {key} = {_shown(getattr(was_settings, key))} but the "
                f"config now says {_shown(getattr(current, key))}: restore the saved value in the config "
                "(or train a new pipeline)."
            )


def _shown(value) -> str:
    return repr(value.value) if isinstance(value, Training) else repr(value)
