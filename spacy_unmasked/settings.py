"""Typed settings of an unmasked transformer, shared by building, saving and loading."""

from dataclasses import asdict, dataclass, field
from typing import Any

from .families import SUPPORTED_BACKENDS, UnsupportedModelError
from .spec import check_spec

UnmaskValue = str | list[int]


@dataclass(frozen=True)
class LoRASettings:
    """LoRA adapter settings (see ``spacy-unmasked.LoRA.v1``)."""

    r: int = 64
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"LoRA rank r={self.r} must be at least 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout {self.dropout} must be in [0, 1).")
        if not self.target_modules:
            raise ValueError("LoRA target_modules is empty: name modules such as ['q_proj', 'v_proj'].")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass(frozen=True)
class QuantizationSettings:
    """bitsandbytes quantization settings (see ``spacy-unmasked.BitsAndBytes.v1``)."""

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"Quantization bits={self.bits} is not supported: use 4 or 8.")
        if self.compute_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(
                f"Quantization compute_dtype {self.compute_dtype!r} is not supported: use 'bfloat16', 'float16' "
                "or 'float32'."
            )
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"Quantization type {self.quant_type!r} is not supported: use 'nf4' or 'fp4'.")


@dataclass(frozen=True)
class TransformerSettings:
    """Everything needed to rebuild the Hugging Face side of the pipeline."""

    name: str
    revision: str | None = None
    unmask: UnmaskValue = "all"
    lora: LoRASettings | None = None
    quantization: QuantizationSettings | None = None
    freeze_base: bool = False
    torch_dtype: str = "auto"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    num_layers: int | None = None
    max_length: int = 512
    add_bos: bool = True
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    transformer_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.quantization is not None and self.lora is None and not self.freeze_base:
            raise ValueError(
                "A quantized base cannot be fine-tuned fully: add a LoRA block "
                "(lora = spacy-unmasked.LoRA.v1) or set freeze_base = true."
            )
        if self.lora is not None and self.freeze_base:
            raise ValueError(
                "freeze_base = true with a LoRA block trains nothing in the transformer: drop one of them."
            )
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers} must be at least 1 (or null for every layer).")
        check_spec(self.unmask)
        if self.attn_implementation not in SUPPORTED_BACKENDS:
            raise UnsupportedModelError(
                f"Attention backend {self.attn_implementation!r} is not supported. Supported backends: "
                f"{', '.join(SUPPORTED_BACKENDS)}."
            )
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} must be at least 2 pieces.")
        if self.torch_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"torch_dtype {self.torch_dtype!r} is not supported: use 'auto', 'float32', 'bfloat16' or 'float16'."
            )

    @property
    def trains_base(self) -> bool:
        """Whether every base weight is trained (full fine-tuning)."""
        return self.lora is None and not self.freeze_base

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the settings."""
        data = asdict(self)
        if data["lora"] is not None:
            data["lora"]["target_modules"] = list(data["lora"]["target_modules"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerSettings":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        if data.get("lora") is not None:
            data["lora"] = LoRASettings(**data["lora"])
        if data.get("quantization") is not None:
            data["quantization"] = QuantizationSettings(**data["quantization"])
        return cls(**data)
