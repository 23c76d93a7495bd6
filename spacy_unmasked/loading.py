"""Hugging Face loading, and the one recipe that builds the transformer:
base (dtype, device, quantization, attention backend) → training mode → LoRA →
unmask → a check that unmasking took effect. ``initialize`` and ``spacy.load``
both go through :func:`build_transformer`."""

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .errors import BaseModelNotFoundError, QuantizationUnavailableError
from .families import SUPPORTED_FAMILIES, UnsupportedModelError, check_family
from .guard import verify_unmasking
from .masking import UnmaskHandle, unmask
from .saving import SavedTransformer, base_identity, check_adapter, check_architecture, check_weights
from .settings import LoRASettings, QuantizationSettings, Training, TransformerSettings
from .spec import resolve_spec

# bitsandbytes releases tested here: CUDA since long, CPU (4-bit, 8-bit, QLoRA backward) from 0.50.2.
MIN_BITSANDBYTES = {"cuda": (0, 45, 0), "cpu": (0, 50, 2)}


@dataclass
class BuiltTransformer:
    """A decoder ready for the pipeline, its unmask handle and its base identity."""

    model: torch.nn.Module
    handle: UnmaskHandle
    base: dict[str, Any]


def build_transformer(
    settings: TransformerSettings, device: torch.device, *, saved: SavedTransformer | None = None
) -> BuiltTransformer:
    """Build the transformer: fresh LoRA adapters on the named base (``saved`` is
    None), or a saved pipeline's adapter or weights, its base checked against the
    identity it was saved with."""
    stored_weights = saved.weights_dir if saved is not None else None
    if stored_weights is None:
        config = load_base_config(settings)
    else:
        config = AutoConfig.from_pretrained(str(stored_weights))
        check_family(config)
    if saved is not None and stored_weights is None:
        check_architecture(saved.base, settings.name, config)
    layers = resolve_spec(settings.unmask, config.num_hidden_layers)  # fail before loading any weights
    model = load_base_model(
        settings,
        device,
        config=config,
        source=str(stored_weights) if stored_weights else None,
        for_training=saved is None,
    )
    if saved is not None and stored_weights is not None:
        base = saved.base
    else:
        base = base_identity(settings, model)
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
    handle = unmask(model, layers)
    verify_unmasking(model, handle.layers)  # one tiny forward pass: did unmasking take effect?
    return BuiltTransformer(model=model, handle=handle, base=base)


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
    """Load a fast tokenizer and set it up for labelling: right padding and a pad token."""
    source, extra = _source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, **extra, **tokenizer_config)
    except OSError as error:
        raise _not_found(source, error) from error
    if not tokenizer.is_fast:
        raise ValueError(
            f"The tokenizer of {source!r} is a slow (Python) tokenizer, which gives no character "
            "offsets: install `tokenizers` or use a checkpoint that ships tokenizer.json."
        )
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


def bitsandbytes_config(quantization: QuantizationSettings, device: torch.device):
    """The transformers ``BitsAndBytesConfig`` for ``quantization``, after checking
    that the installed bitsandbytes runs on ``device``."""
    minimum = MIN_BITSANDBYTES.get(device.type)
    wanted = "pip install 'spacy-unmasked[quantization]'"
    if minimum is None:
        raise QuantizationUnavailableError(
            f"bitsandbytes quantization is not supported on {device.type} by spacy-unmasked: run on CUDA or CPU, "
            "or set quantization = null."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailableError(
            f"Quantization needs bitsandbytes, which is not installed: {wanted} (bitsandbytes >= "
            f"{'.'.join(map(str, minimum))} on {device.type}), or set quantization = null."
        )
    installed = importlib.metadata.version("bitsandbytes")
    if _version_tuple(installed) < minimum:
        raise QuantizationUnavailableError(
            f"bitsandbytes {installed} cannot quantize on {device.type}: install bitsandbytes >= "
            f"{'.'.join(map(str, minimum))} ({wanted}), or set quantization = null."
        )
    from transformers import BitsAndBytesConfig

    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, quantization.compute_dtype),
    )


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


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
        kwargs["quantization_config"] = bitsandbytes_config(settings.quantization, device)
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


def keep_4bit_layout(model: torch.nn.Module) -> None:
    """Keep bitsandbytes 4-bit layers in one layout for good. On CPUs with
    AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer's weights the first
    time it runs in eval mode; in that layout its matmul has no backward
    (gradients stop there without an error), a layer with a bias fails in
    training, and packing back is not exact. Measured here it was no faster."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def apply_lora(
    model: torch.nn.Module, lora: LoRASettings, *, state: dict[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters whose weights are float32: fresh ones,
    or the saved ``state`` (checked to fit)."""
    import peft

    check_lora_targets(model, lora)
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    model = peft.get_peft_model(model, config, autocast_adapter_dtype=True)  # adapters stay float32
    if state is not None:
        check_adapter(model, state, "saved with this pipeline")
        peft.set_peft_model_state_dict(model, state)
    return model


def check_lora_targets(model: torch.nn.Module, lora: LoRASettings) -> None:
    """Raise if a LoRA target module name matches no linear layer of ``model``."""
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__
    ]
    missing = [t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        short_names = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise ValueError(
            f"LoRA target modules {missing} do not exist in this model. Its linear layers are: "
            f"{', '.join(short_names)}. Set lora.target_modules to some of them."
        )
