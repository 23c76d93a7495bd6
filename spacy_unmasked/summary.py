"""What a loaded unmasked transformer is, as a dict for ``nlp.meta`` and as one line for the log."""

from typing import Any

from .layers.shim import UnmaskedShim


def describe(shim: UnmaskedShim) -> dict[str, Any]:
    """Base (name, revision), unmask spec and the layers it resolves to, layer
    count, training mode, LoRA, quantization and the weights' dtype."""
    settings = shim.settings
    summary: dict[str, Any] = {
        "base": {"name": settings.name, "revision": settings.revision},
        "unmask": settings.unmask,
        "repeat": settings.repeat,
        "layers": None,
        "num_layers": None,
        "training": settings.training.value,
        "lora": None,
        "quantization": None,
        "torch_dtype": settings.torch_dtype,
        "attn_implementation": settings.attn_implementation,
        "inference": None,
    }
    data = settings.to_dict()
    summary["lora"], summary["quantization"] = data["lora"], data["quantization"]
    if shim.is_loaded:
        summary["inference"] = shim.inference_form
        summary["layers"] = list(shim.handle.layers)
        summary["num_layers"] = shim.model.config.num_hidden_layers
        base_weights = [p for n, p in shim.model.named_parameters() if "lora_" not in n and p.is_floating_point()]
        if base_weights:
            summary["torch_dtype"] = str(base_weights[0].dtype).removeprefix("torch.")
    return summary


def one_line(summary: dict[str, Any]) -> str:
    """A one-line description such as ``base 'x' (30 layers), layers 16-29 bidirectional (unmask '0011'), ...``."""
    base = summary["base"]
    revision = f"@{base['revision']}" if base.get("revision") else ""
    layers = summary["layers"] or []
    parts = [
        f"unmasked transformer on {base['name']!r}{revision} ({summary['num_layers']} layers)",
        f"bidirectional layers {_ranges(layers) or 'none'} (unmask {summary['unmask']!r})",
    ]
    if summary.get("repeat"):
        parts.append(f"input repeated {summary['repeat']}x")
    lora = summary.get("lora")
    if lora:
        parts.append(f"LoRA r={lora['r']} alpha={lora['alpha']} on {','.join(lora['target_modules'])}")
    else:
        parts.append(f"{summary['training']} base")
    quantization = summary.get("quantization")
    if quantization:
        kind = quantization["quant_type"] if quantization["bits"] == 4 else "int8"
        parts.append(f"{quantization['bits']}-bit {kind}")
    parts.append(str(summary["torch_dtype"]))
    if summary.get("inference"):
        parts.append(f"predicting {summary['inference']}")
    return ", ".join(parts)


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``'0-2, 5'``."""
    out, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            out.append(f"{start}-{index}" if index != start else f"{index}")
            start = None
    return ", ".join(out)
