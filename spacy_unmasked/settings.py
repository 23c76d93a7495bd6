"""Typed settings of an unmasked transformer, shared by building, saving and loading.

The LoRA and quantization settings classes are registered as they are
(``spacy-unmasked.LoRA.v1``, ``spacy-unmasked.BitsAndBytes.v1``), so their
defaults live here only. :class:`TransformerSettings` has no defaults: the
registered architecture (``architectures.py``) is the one place that sets them.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from .families import SUPPORTED_BACKENDS, UnsupportedModelError
from .spec import check_spec

UnmaskValue = str | list[int]
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class LoRASettings:
    """LoRA adapters (peft): rank ``r``, scaling ``alpha``, ``dropout``, on the
    linear layers named in ``target_modules`` (short names such as ``q_proj`` or
    dotted ones such as ``self_attn.q_proj``). Defaults: the paper's recipe."""

    r: int = 64
    alpha: int = 16
    dropout: float = 0.1
    target_modules: Sequence[str] = ("q_proj", "v_proj")

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"LoRA rank r={self.r} must be at least 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout {self.dropout} must be in [0, 1).")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(
                f"LoRA target_modules {self.target_modules!r} must be a non-empty list of module names such as "
                "['q_proj', 'v_proj']."
            )
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def shape(self) -> tuple:
        """The settings that decide what saved adapter weights mean (not dropout)."""
        return (self.r, self.alpha, tuple(self.target_modules))


@dataclass(frozen=True, kw_only=True)
class QuantizationSettings:
    """bitsandbytes quantization of the base: 4-bit (``quant_type`` nf4 or fp4,
    optional double quantization, ``compute_dtype``: "auto" is bfloat16 where the
    device computes it natively and float32 elsewhere) or 8-bit. Runs on CUDA and,
    with bitsandbytes >= 0.50.2, on CPU. Defaults: QLoRA (NF4, double
    quantization, bfloat16 compute)."""

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"Quantization bits={self.bits} is not supported: use 4 or 8.")
        if self.compute_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(
                f"Quantization compute_dtype {self.compute_dtype!r} is not supported: use 'auto', 'bfloat16', "
                "'float16' or 'float32'."
            )
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"Quantization type {self.quant_type!r} is not supported: use 'nf4' or 'fp4'.")


class Training(str, Enum):
    """What training changes in the transformer: LoRA adapters only, every base
    weight, or nothing (a frozen feature extractor)."""

    LORA = "lora"
    FULL = "full"
    FROZEN = "frozen"

    @classmethod
    def from_config(cls, *, lora: LoRASettings | None, freeze_base: bool) -> "Training":
        """The mode a config's ``lora`` block and ``freeze_base`` flag ask for."""
        if lora is not None and freeze_base:
            raise ValueError(
                "freeze_base = true with a LoRA block trains nothing in the transformer: drop one of them."
            )
        if lora is not None:
            return cls.LORA
        return cls.FROZEN if freeze_base else cls.FULL


@dataclass(frozen=True, kw_only=True)
class TransformerSettings:
    """Everything needed to rebuild the Hugging Face side of the pipeline."""

    name: str
    revision: str | None
    unmask: UnmaskValue
    training: Training
    lora: LoRASettings | None
    quantization: QuantizationSettings | None
    torch_dtype: str
    attn_implementation: str
    gradient_checkpointing: bool
    num_layers: int | None
    max_length: int
    add_bos: bool
    tokenizer_config: dict[str, Any]
    transformer_config: dict[str, Any]
    repeat: int = 0

    def __post_init__(self):
        object.__setattr__(self, "training", Training(self.training))
        if (self.training == Training.LORA) != (self.lora is not None):
            raise ValueError(f"Training mode {self.training.value!r} does not match lora = {self.lora!r}.")
        if self.quantization is not None and self.training == Training.FULL:
            raise ValueError(
                "A quantized base cannot be fine-tuned fully: add a LoRA block "
                "(lora = spacy-unmasked.LoRA.v1) or set freeze_base = true."
            )
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers} must be at least 1 (or null for every layer).")
        check_spec(self.unmask)
        if self.attn_implementation not in SUPPORTED_BACKENDS:
            raise UnsupportedModelError(
                f"Attention backend {self.attn_implementation!r} is not supported. Supported backends: "
                f"{', '.join(SUPPORTED_BACKENDS)}."
            )
        if not isinstance(self.repeat, int) or isinstance(self.repeat, bool) or self.repeat < 0:
            raise ValueError(
                f"repeat={self.repeat!r} must be a whole number of extra copies: 0 (no repetition), 1, 2, ..."
            )
        if self.max_length < 2 + self.repeat:
            raise ValueError(
                f"max_length={self.max_length} must be at least {2 + self.repeat} pieces "
                f"(BOS and {self.repeat + 1} copies of one piece)."
            )
        if self.torch_dtype not in TORCH_DTYPES:
            raise ValueError(
                f"torch_dtype {self.torch_dtype!r} is not supported: use {', '.join(map(repr, TORCH_DTYPES))}."
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the settings."""
        data = asdict(self)
        data["training"] = self.training.value
        if data["lora"] is not None:
            data["lora"]["target_modules"] = list(data["lora"]["target_modules"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerSettings":
        """Inverse of :meth:`to_dict` (also reads format-1 manifests, which stored ``freeze_base``)."""
        data = dict(data)
        lora = LoRASettings(**data["lora"]) if data.get("lora") is not None else None
        data["lora"] = lora
        if data.get("quantization") is not None:
            data["quantization"] = QuantizationSettings(**data["quantization"])
        if "freeze_base" in data:
            data["training"] = Training.from_config(lora=lora, freeze_base=data.pop("freeze_base"))
        return cls(**data)
