"""bitsandbytes quantization of the base: the transformers config for it, the
versions that run on each device, and the one layout rule for 4-bit layers."""

import importlib.metadata
import importlib.util

import torch

from .errors import QuantizationUnavailableError
from .settings import QuantizationSettings

# bitsandbytes releases tested here: CUDA since long, CPU (4-bit, 8-bit, QLoRA backward) from 0.50.2.
MIN_BITSANDBYTES = {"cuda": (0, 45, 0), "cpu": (0, 50, 2)}


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


def keep_4bit_layout(model: torch.nn.Module) -> None:
    """Keep bitsandbytes 4-bit layers in one layout for good. On CPUs with
    AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer's weights the first
    time it runs in eval mode; in that layout its matmul has no backward
    (gradients stop there without an error), a layer with a bias fails in
    training, and packing back is not exact."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
