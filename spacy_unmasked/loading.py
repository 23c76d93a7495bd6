"""Load a base decoder and its tokenizer as the settings ask: dtype, device,
quantization, attention backend, LoRA, frozen weights and unmasking."""

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .families import SUPPORTED_FAMILIES, UnsupportedModelError, check_family, find_decoder
from .masking import UnmaskHandle, unmask
from .settings import LoRASettings, QuantizationSettings, TransformerSettings
from .spec import resolve_spec


class BaseModelNotFoundError(OSError):
    """The base model named by a pipeline cannot be found."""


class BaseModelMismatchError(ValueError):
    """The base model found differs from the one a pipeline was trained on."""


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
    """Load and check the base model's config (no weights)."""
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


def resolve_dtype(settings: TransformerSettings, device: torch.device, *, for_training: bool = True) -> torch.dtype:
    """The dtype of the base weights: 'auto' is bfloat16 on CUDA unless the base
    itself is trained (thinc's optimizer needs float32), float32 otherwise.
    A fully fine-tuned pipeline may still be loaded in bfloat16 for inference."""
    if settings.torch_dtype == "auto":
        if device.type == "cuda" and not settings.trains_base:
            return torch.bfloat16
        return torch.float32
    dtype = getattr(torch, settings.torch_dtype)
    if for_training and settings.trains_base and dtype != torch.float32:
        raise ValueError(
            f"Full fine-tuning needs float32 weights, but torch_dtype is {settings.torch_dtype!r}: "
            "use torch_dtype = 'float32', add a LoRA block, or set freeze_base = true."
        )
    return dtype


def _bitsandbytes_config(quantization: QuantizationSettings, device: torch.device):
    if device.type != "cuda":
        raise ValueError(
            f"{quantization.bits}-bit quantization needs a CUDA GPU but the model would run on {device.type}: "
            "train with --gpu-id 0 (spacy.require_gpu() in Python), or set quantization = null on CPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "Quantization needs bitsandbytes, which is not installed: "
            "pip install 'spacy-unmasked[quantization]', or set quantization = null."
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


def load_base_model(
    settings: TransformerSettings,
    device: torch.device,
    *,
    source: str | None = None,
    config=None,
    for_training: bool = True,
) -> torch.nn.Module:
    """Load the bare decoder (``XModel``, no LM head) with dtype, backend,
    quantization and device applied. ``source`` overrides ``settings.name``
    (used for weights saved with a pipeline); ``config`` skips reloading it."""
    if config is None:
        config = load_base_config(settings) if source is None else AutoConfig.from_pretrained(source)
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
        kwargs["quantization_config"] = _bitsandbytes_config(settings.quantization, device)
    if device.type != "cpu":
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


def apply_lora(model: torch.nn.Module, lora: LoRASettings) -> torch.nn.Module:
    """Wrap ``model`` with fresh LoRA adapters whose weights are float32."""
    import peft

    check_lora_targets(model, lora)
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    return peft.get_peft_model(model, config, autocast_adapter_dtype=True)  # adapters stay float32


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


def configure_training(model: torch.nn.Module, settings: TransformerSettings) -> None:
    """Freeze what is not trained and switch on gradient checkpointing if asked."""
    if settings.freeze_base:
        model.requires_grad_(False)
    if settings.gradient_checkpointing and not settings.freeze_base:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_transformer(
    settings: TransformerSettings, device: torch.device, *, config=None
) -> tuple[torch.nn.Module, UnmaskHandle]:
    """Load the base, add fresh LoRA adapters if configured, freeze or enable
    checkpointing, and unmask. Returns the model and the unmask handle."""
    config = config if config is not None else load_base_config(settings)
    resolve_spec(settings.unmask, config.num_hidden_layers)  # fail before loading any weights
    model = load_base_model(settings, device, config=config)
    configure_training(model, settings)
    if settings.lora is not None:
        model = apply_lora(model, settings.lora)
    handle = unmask(model, settings.unmask)
    return model, handle


_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "quantization_config",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "attn_implementation",
    "use_cache",
    "architectures",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "_commit_hash",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
}


def config_digest(config) -> str:
    """SHA-256 of a config's architecture settings (names, paths and runtime flags left out)."""
    architecture = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(architecture, sort_keys=True, default=str).encode()).hexdigest()


def base_fingerprint(settings: TransformerSettings, model: torch.nn.Module) -> dict[str, Any]:
    """Identity of a base model: name, revision, an architecture hash and a
    probe of its weights, checked again when a pipeline loads."""
    return {
        "name": settings.name,
        "revision": settings.revision,
        "model_type": model.config.model_type,
        "num_hidden_layers": model.config.num_hidden_layers,
        "config_sha256": config_digest(model.config),
        "embedding_probe": embedding_probe(model),
    }


def check_architecture(saved: dict[str, Any], settings: TransformerSettings, config) -> None:
    """Raise before loading weights if the base's architecture differs from the saved one."""
    if saved["config_sha256"] != config_digest(config):
        raise BaseModelMismatchError(
            f"Base model {settings.name!r} ({config.model_type}, {config.num_hidden_layers} layers) has a "
            f"different architecture from the one this pipeline was trained on, {saved['name']!r} "
            f"({saved['model_type']}, {saved['num_hidden_layers']} layers). {_POINT_AT_BASE}"
        )


def embedding_probe(model: torch.nn.Module) -> list:
    """A cheap weight identity: input-embedding values at spread-out rows plus
    the last block's and the final norm weights (never quantized; fine-tunes
    change them)."""
    weight = model.get_input_embeddings().weight
    rows = torch.linspace(0, weight.shape[0] - 1, 8).long().to(weight.device)
    values = [weight[rows, :8].flatten()]
    decoder = find_decoder(model)
    for norm in (decoder.layers[-1].input_layernorm, decoder.layers[-1].post_attention_layernorm, decoder.norm):
        values.append(norm.weight[:32])
    return torch.cat([v.detach().float().cpu() for v in values]).tolist()


_POINT_AT_BASE = (
    "Point the pipeline at the base it was trained on with spacy.load(path, config="
    "{'components': {'transformer': {'model': {'name': ...}}}})."
)


def check_weights(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise :class:`BaseModelMismatchError` if the base's weight probe differs from the saved one."""
    probe_saved = torch.tensor(saved["embedding_probe"])
    probe_now = torch.tensor(current["embedding_probe"])
    if probe_saved.shape != probe_now.shape or not torch.allclose(probe_saved, probe_now, rtol=1e-2, atol=1e-6):
        raise BaseModelMismatchError(
            f"Base model {current['name']!r} has the same architecture as {saved['name']!r} but "
            f"different weights, so the saved adapter would give wrong results. {_POINT_AT_BASE}"
        )
