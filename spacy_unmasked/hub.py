"""Hugging Face loading: a base model's config, its tokenizer and its weights
(dtype, device, attention backend, quantization), from a hub id, a local
folder or a ``.gguf`` file."""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .errors import BaseModelNotFoundError, UnsupportedModelError
from .families import SUPPORTED_FAMILIES, check_family
from .quantization import bitsandbytes_config
from .settings import Training, TransformerSettings

# Config and tokenizer -------------------------------------------------------


def _source(name: str) -> tuple[str, dict[str, Any]]:
    """Split a GGUF file path into its folder and ``gguf_file`` argument."""
    path = Path(name)
    if path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    return name, {}


def _not_found(name: str, error: Exception) -> BaseModelNotFoundError:
    return BaseModelNotFoundError(
        f"Base model {name!r} cannot be found ({type(error).__name__}: {(str(error).splitlines() or [''])[0]}). "
        "Use a Hugging Face hub id that is in your cache or a local folder, and point a saved "
        "pipeline at it with spacy.load(path, config={'components': {'transformer': {'model': "
        "{'name': '/path/to/base'}}}})."
    )


def load_base_config(settings: TransformerSettings):
    """Load and check the base model's config (no weights), cut to ``num_layers``."""
    source, extra = _source(settings.name)
    try:
        config = AutoConfig.from_pretrained(source, revision=settings.revision, **extra, **settings.transformer_config)
    except OSError as error:
        raise _not_found(settings.name, error) from error
    except (KeyError, ValueError) as error:
        if "model_type" in str(error) or "architecture" in str(error) or isinstance(error, KeyError):
            raise UnsupportedModelError(
                f"{settings.name!r} has a model type this transformers version does not know ({error}). "
                f"Supported families: {', '.join(SUPPORTED_FAMILIES)}."
            ) from error
        raise
    check_family(config)
    if settings.num_layers is not None:
        truncate_config(config, settings.num_layers)
    return config


def truncate_config(config, num_layers: int) -> None:
    """Keep only the first ``num_layers`` decoder blocks (the rest are not loaded)."""
    available = config.num_hidden_layers
    if num_layers > available:
        raise ValueError(
            f"num_layers={num_layers} exceeds the {available} decoder layers of this model: use 1..{available} or null."
        )
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:num_layers]


def load_tokenizer(source: str, *, revision: str | None = None, **tokenizer_config) -> PreTrainedTokenizerBase:
    """Load a tokenizer (fast, or slow with ``use_fast = false``) and set it up
    for labelling: right padding and a pad token."""
    source, extra = _source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, **extra, **tokenizer_config)
    except OSError as error:
        raise _not_found(source, error) from error
    except (ImportError, ValueError, TypeError) as error:
        if tokenizer_config.get("use_fast", True) is not False:
            raise
        raise ValueError(
            f"tokenizer_config use_fast = false asks for the slow (Python) tokenizer of {source!r}, which cannot "
            f"be loaded: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]} Remove use_fast "
            "from tokenizer_config to use its fast tokenizer (tokenizer.json), or install what the slow one needs."
        ) from error
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Right padding, and a pad token borrowed from EOS or UNK when there is none."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(
                "The tokenizer has no pad, EOS or UNK token to pad batches with: add one with "
                "tokenizer.add_special_tokens({'pad_token': ...}) and save it, or pass "
                "tokenizer_config = {'pad_token': '<token in the vocabulary>'}."
            )
        tokenizer.pad_token = fallback
    return tokenizer


# Weights ------------------------------------------------------------------------


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA: Ampere or newer;
    CPU: AVX512-BF16, AMX or Arm BF16, as oneDNN reports it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_dtype(settings: TransformerSettings, device: torch.device, *, for_training: bool = True) -> torch.dtype:
    """The dtype of the base weights. 'auto' is bfloat16 where the device computes
    it natively unless the base itself is trained (thinc's optimizer needs
    float32), float32 otherwise. A fully fine-tuned pipeline may still be loaded
    in bfloat16 for inference."""
    if settings.torch_dtype == "auto":
        if settings.training != Training.FULL and native_bfloat16(device):
            return torch.bfloat16
        return torch.float32
    dtype = getattr(torch, settings.torch_dtype)
    if for_training and settings.training == Training.FULL and dtype != torch.float32:
        raise ValueError(
            f"Full fine-tuning needs float32 weights, but torch_dtype is {settings.torch_dtype!r}: "
            "use torch_dtype = 'float32', add a LoRA block, or set freeze_base = true."
        )
    return dtype


def load_base_model(
    settings: TransformerSettings,
    device: torch.device,
    *,
    config,
    source: str | None = None,
    for_training: bool = True,
) -> torch.nn.Module:
    """Load the bare decoder (``XModel``, no LM head) with dtype, backend,
    quantization and device applied. ``source`` overrides ``settings.name``
    (used for weights saved with a pipeline)."""
    name, extra = _source(source or settings.name)
    kwargs: dict[str, Any] = dict(
        config=config,
        torch_dtype=resolve_dtype(settings, device, for_training=for_training),
        attn_implementation=settings.attn_implementation,
        **extra,
    )
    if source is None:
        kwargs["revision"] = settings.revision
    if settings.quantization is not None:
        if "gguf_file" in extra:
            raise ValueError(
                f"{name}/{extra['gguf_file']} is a GGUF file, which transformers cannot quantize with bitsandbytes: "
                "save it as a Hugging Face folder first (AutoModel.from_pretrained(folder, gguf_file=...)"
                ".save_pretrained(out), or scripts/convert_gguf.py) and use that folder as the name."
            )
        kwargs["quantization_config"] = bitsandbytes_config(
            settings.quantization, device, native_bfloat16=native_bfloat16(device)
        )
    if device.type != "cpu" or settings.quantization is not None:
        kwargs["device_map"] = {"": device}  # load straight onto the device, no host copy
    try:
        model = AutoModel.from_pretrained(name, **kwargs)
    except OSError as error:
        raise _not_found(name, error) from error
    except ValueError as error:
        if "attn_implementation" in str(error) or "attention" in str(error).lower():
            raise ValueError(
                f"Attention backend {settings.attn_implementation!r} cannot be used with {name!r}: "
                f"{str(error).splitlines()[0]} Use attn_implementation = 'sdpa' or 'eager'."
            ) from error
        raise
    model.config.use_cache = False
    return model


def load_unquantized_base(settings: TransformerSettings, *, source: str | None = None) -> torch.nn.Module:
    """The base as its checkpoint stores it (its own dtype, no quantization, on
    CPU), cut to ``num_layers``: what a quantized pipeline embeds, so that it
    quantizes the same weights again when it loads. ``source``: a folder of
    weights embedded in a saved pipeline, used instead of ``settings.name``."""
    if source is None:
        config = load_base_config(settings)
        name, extra = _source(settings.name)
        extra["revision"] = settings.revision
    else:
        config, name, extra = AutoConfig.from_pretrained(source), source, {}
    try:
        model = AutoModel.from_pretrained(name, config=config, torch_dtype="auto", **extra)
    except OSError as error:
        raise _not_found(name, error) from error
    model.config.use_cache = False
    return model
