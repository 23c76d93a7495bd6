"""bitsandbytes quantization of the base: the transformers config for it, the
versions that run on each device, and the one layout rule for 4-bit layers."""

import importlib.metadata
import importlib.util

import torch

from .errors import QuantizationUnavailableError
from .settings import QuantizationSettings

# bitsandbytes releases tested here: CUDA since long, CPU (4-bit, 8-bit, QLoRA backward) from 0.50.2.
MIN_BITSANDBYTES = {"cuda": (0, 45, 0), "cpu": (0, 50, 2)}


def bitsandbytes_config(quantization: QuantizationSettings, device: torch.device, *, native_bfloat16: bool):
    """The transformers ``BitsAndBytesConfig`` for ``quantization``, after checking
    that the installed bitsandbytes runs on ``device``. ``compute_dtype = "auto"``
    is bfloat16 when the device computes it natively (``native_bfloat16``), else
    float32: emulated bfloat16 makes 4-bit layers many times slower."""
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
        bnb_4bit_compute_dtype=compute_dtype(quantization, native_bfloat16=native_bfloat16),
    )


def compute_dtype(quantization: QuantizationSettings, *, native_bfloat16: bool) -> torch.dtype:
    """The dtype 4-bit layers compute in ("auto": bfloat16 where native, else float32)."""
    if quantization.compute_dtype == "auto":
        return torch.bfloat16 if native_bfloat16 else torch.float32
    return getattr(torch, quantization.compute_dtype)


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


def is_quantized_linear(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a bitsandbytes 4-bit or 8-bit linear layer."""
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt") and hasattr(module, "weight")


class DequantizedInference:
    """A loaded quantized pipeline predicting with its base dequantized to the
    compute dtype and its LoRA adapters folded in: the function it was trained
    as (up to rounding to the compute dtype), at the speed of a plain matmul.
    :meth:`restore` puts the quantized layers and separate adapters back, e.g.
    before training resumes; the saved files are unaffected either way."""

    def __init__(self) -> None:
        self._swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []

    @property
    def active(self) -> bool:
        """Whether the model currently runs dequantized."""
        return bool(self._swapped)

    @staticmethod
    def extra_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
        """Memory the dequantized weights take (the quantized ones stay alongside)."""
        size = torch.empty((), dtype=dtype).element_size()
        return sum(m.in_features * m.out_features * size for m in model.modules() if is_quantized_linear(m))

    def apply(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        """Swap every quantized linear layer (with its LoRA wrapper, if any) for
        an ``nn.Linear`` in ``dtype`` holding the dequantized weight plus the
        adapters' delta."""
        from peft.tuners.lora import LoraLayer
        from peft.utils.integrations import dequantize_bnb_weight

        if self.active:
            return
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, LoraLayer) and is_quantized_linear(child.get_base_layer()):
                    base = child.get_base_layer()
                    weight = dequantize_bnb_weight(base.weight, state=getattr(base, "state", None)).float()
                    for adapter in child.active_adapters:
                        weight = weight + child.get_delta_weight(adapter).float()
                elif is_quantized_linear(child) and name != "base_layer":
                    base = child
                    weight = dequantize_bnb_weight(base.weight, state=getattr(base, "state", None)).float()
                else:
                    continue
                linear = torch.nn.Linear(
                    base.in_features, base.out_features, bias=base.bias is not None, dtype=dtype, device=weight.device
                )
                with torch.no_grad():
                    linear.weight.copy_(weight.to(dtype))
                    if base.bias is not None:
                        linear.bias.copy_(base.bias.to(dtype))
                linear.requires_grad_(False)
                setattr(parent, name, linear)
                self._swapped.append((parent, name, child))

    def restore(self) -> None:
        """Put the quantized layers and their adapters back."""
        for parent, name, original in reversed(self._swapped):
            setattr(parent, name, original)
        self._swapped = []


def memory_available(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes (None when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
