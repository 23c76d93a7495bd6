"""The identity of a base model: an architecture digest and a weight probe,
stored with a pipeline and checked when it loads, so that adapters are never
applied to another base."""

import hashlib
import json
from typing import Any

import torch

from .errors import BaseModelMismatchError
from .settings import TransformerSettings

POINT_AT_BASE = (
    "Point the pipeline at the base it was trained on with spacy.load(path, config="
    "{'components': {'transformer': {'model': {'name': ...}}}})."
)
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


def base_identity(settings: TransformerSettings, model: torch.nn.Module, decoder: torch.nn.Module) -> dict[str, Any]:
    """Identity of a base model: name, revision, an architecture hash and a
    probe of its weights (``decoder``: the model's decoder stack)."""
    return {
        "name": settings.name,
        "revision": settings.revision,
        "model_type": model.config.model_type,
        "num_hidden_layers": model.config.num_hidden_layers,
        "config_sha256": config_digest(model.config),
        "embedding_probe": weight_probe(model, decoder),
    }


def weight_probe(model: torch.nn.Module, decoder: torch.nn.Module) -> list[float]:
    """A cheap weight identity: input-embedding values at spread-out rows plus
    the last block's and the final norm weights (never quantized; fine-tunes
    change them)."""
    weight = model.get_input_embeddings().weight
    rows = torch.linspace(0, weight.shape[0] - 1, 8).long().to(weight.device)
    values = [weight[rows, :8].flatten()]
    last = decoder.layers[-1]
    norms = [getattr(last, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
    norms.append(getattr(decoder, "norm", None))
    for norm in norms:
        if norm is not None and getattr(norm, "weight", None) is not None:
            values.append(norm.weight[:32])
    return torch.cat([v.detach().float().cpu().flatten() for v in values]).tolist()


def check_architecture(saved: dict[str, Any], name: str, config) -> None:
    """Raise before loading weights if the base's architecture differs from the saved one."""
    if saved["config_sha256"] != config_digest(config):
        raise BaseModelMismatchError(
            f"Base model {name!r} ({config.model_type}, {config.num_hidden_layers} layers) has a "
            f"different architecture from the one this pipeline was trained on, {saved['name']!r} "
            f"({saved['model_type']}, {saved['num_hidden_layers']} layers). {POINT_AT_BASE}"
        )


def check_weights(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise :class:`BaseModelMismatchError` if the base's weight probe differs from the saved one.

    The same base may load in another dtype (bfloat16 rounds to 0.4%), hence
    the tolerance of 1%."""
    probe_saved = torch.tensor(saved["embedding_probe"])
    probe_now = torch.tensor(current["embedding_probe"])
    if probe_saved.shape != probe_now.shape or not torch.allclose(probe_saved, probe_now, rtol=1e-2, atol=1e-6):
        raise BaseModelMismatchError(
            f"Base model {current['name']!r} has the same architecture as {saved['name']!r} but "
            f"different weights, so the saved adapter would give wrong results. {POINT_AT_BASE}"
        )
