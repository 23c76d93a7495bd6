"""Which Hugging Face decoders unmasking supports, decided from their structure.

Unmasking needs one shape, whatever the model type is called: a decoder stack
holding its blocks in a ``.layers`` ``ModuleList``; in each block one attention
module with an ``is_causal`` flag whose ``forward`` takes ``attention_mask`` by
keyword; and no other token mixer (a state-space or convolution layer stays
causal whatever the mask says). Models of that shape are accepted; anything
else gets :class:`UnsupportedModelError` naming what it lacks. Whether the
mask really reaches the attention is checked at run time by
:func:`spacy_unmasked.guard.verify_unmasking`.
"""

import copy
import inspect

import torch
from torch import nn

from .errors import UnsupportedModelError

# The model types the test suite builds and checks against an independent oracle
# (tests/test_families.py), for error messages and documentation. Other model types
# of the same structure are accepted too.
SUPPORTED_FAMILIES = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "phimoe",
    "olmo",
    "olmo2",
    "olmoe",
    "granite",
    "granitemoe",
    "granitemoeshared",
    "cohere",
    "cohere2",
    "starcoder2",
    "stablelm",
    "glm",
    "glm4",
    "helium",
    "smollm3",
    "arcee",
    "bitnet",
    "deepseek_v3",
    "nemotron",
    "persimmon",
    "gpt_neox",
)
SUPPORTED_BACKENDS = ("eager", "sdpa", "flash_attention_2")

# Set on a decoder stack while an UnmaskHandle is installed (its unmasked layers then
# have is_causal False).
HANDLE_ATTR = "_spacy_unmasked_handle"
_SKELETON_LAYERS = 4


def _families_hint() -> str:
    return (
        "Unmasking supports decoder-only models whose blocks sit in a `.layers` list and whose attention "
        f"has an `is_causal` flag and takes `attention_mask` by keyword; verified: {', '.join(SUPPORTED_FAMILIES)}."
    )


def check_family(config) -> None:
    """Raise :class:`UnsupportedModelError` if a Hugging Face config describes a
    model that cannot be unmasked, before any weight is loaded.

    The check builds a few blocks of the model transformers maps the config to
    on the meta device (no memory, no weights) and checks their structure.
    """
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"Model type {model_type!r} is an encoder-decoder model; only decoder-only models can be unmasked. "
            + _families_hint()
        )
    model_class = _base_model_class(config)
    if model_class is None:
        if getattr(config, "auto_map", None):  # remote code: the built model is checked by find_decoder
            return
        raise UnsupportedModelError(
            f"Model type {model_type!r} has no base model class in this transformers version. " + _families_hint()
        )
    try:
        skeleton = _skeleton(config, model_class)
    except Exception:  # a config that cannot be built on the meta device: find_decoder checks the real model
        return
    _find_stack(skeleton)


def _base_model_class(config) -> type | None:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except (KeyError, ValueError):
        return None


def _skeleton(config, model_class: type) -> nn.Module:
    """The first few blocks of the model on the meta device (each layer type kept)."""
    small = copy.deepcopy(config)
    num_layers = getattr(small, "num_hidden_layers", None)
    if isinstance(num_layers, int) and num_layers > _SKELETON_LAYERS:
        layer_types = getattr(small, "layer_types", None)
        if isinstance(layer_types, list | tuple) and len(layer_types) == num_layers:
            kinds = list(dict.fromkeys(layer_types))
            small.layer_types = (kinds + list(layer_types))[: max(_SKELETON_LAYERS, len(kinds))]
            small.num_hidden_layers = len(small.layer_types)
        else:
            small.num_hidden_layers = _SKELETON_LAYERS
    with torch.device("meta"):
        return model_class(small)


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
    peft-wrapped model, checking its structure and attention backend."""
    decoder = _find_stack(model)
    check_backend(decoder.config)
    return decoder


def decoder_attentions(decoder: nn.Module) -> list[nn.Module]:
    """The attention module of each block of a decoder stack, in layer order."""
    attentions = []
    for index, block in enumerate(decoder.layers):
        attention, problem = _block_attention(block, index)
        if attention is None:
            raise UnsupportedModelError(f"{problem}. " + _families_hint())
        attentions.append(attention)
    return attentions


def _find_stack(model: nn.Module) -> nn.Module:
    """The first module with a config and a ``.layers`` list whose blocks fit."""
    problems: list[str] = []
    other_lists: list[str] = []
    for name, module in model.named_modules():
        layers = getattr(module, "layers", None)
        if isinstance(module, nn.ModuleList) and name and not name.endswith("layers"):
            other_lists.append(name.rsplit(".", 1)[-1])
        if getattr(module, "config", None) is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            continue
        problem = _stack_problem(module)
        if problem is None:
            return module
        problems.append(f"{type(module).__name__}: {problem}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if problems:
        reason = "; ".join(problems)
    else:
        found = f" (its block lists are named {', '.join(sorted(set(other_lists)))!s})" if other_lists else ""
        reason = f"no decoder stack holds its blocks in a `.layers` list{found}"
    raise UnsupportedModelError(
        f"{type(model).__name__} (model type {model_type!r}) cannot be unmasked: {reason}. " + _families_hint()
    )


def _stack_problem(stack: nn.Module) -> str | None:
    """Why a stack of blocks cannot be unmasked, or None if it can."""
    unmasked = getattr(stack, HANDLE_ATTR, None) is not None
    for index, block in enumerate(stack.layers):
        attention, problem = _block_attention(block, index)
        if attention is None:
            return problem
        if not attention.is_causal and not unmasked:
            return f"block {index} ({type(block).__name__}) is not causal (an encoder?)"
        if "attention_mask" not in inspect.signature(block.forward).parameters:
            return f"block {index} ({type(block).__name__}) takes no `attention_mask` keyword"
        mixer = _other_token_mixer(block, attention)
        if mixer is not None:
            return (
                f"block {index} ({type(block).__name__}) mixes tokens outside attention too (`{mixer}`, a "
                "state-space or convolution layer), which stays causal whatever the mask says"
            )
    return None


def _block_attention(block: nn.Module, index: int) -> tuple[nn.Module | None, str]:
    """The block's attention module (outermost module with ``is_causal``), or a problem."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in block.named_modules():
        if name and hasattr(module, "is_causal") and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    where = f"block {index} ({type(block).__name__})"
    if not found:
        return None, f"{where} has no attention module with an `is_causal` flag"
    if len(found) > 1:
        names = ", ".join(f"`{name}`" for name, _ in found)
        return None, f"{where} has several attention modules ({names}); only self-attention blocks are supported"
    name, attention = found[0]
    if "attention_mask" not in inspect.signature(attention.forward).parameters:
        return None, f"{where}: its attention `{name}` ({type(attention).__name__}) takes no `attention_mask` keyword"
    return attention, ""


def _other_token_mixer(block: nn.Module, attention: nn.Module) -> str | None:
    """Name of a submodule that mixes positions outside attention (SSM / convolution)."""
    inside = {id(module) for module in attention.modules()}
    for name, module in block.named_modules():
        if id(module) in inside:
            continue
        if isinstance(module, nn.Conv1d | nn.Conv2d) or "A_log" in module._parameters:
            return name
    return None
