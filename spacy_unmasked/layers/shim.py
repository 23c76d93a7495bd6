"""The PyTorch shim: thinc state around the Hugging Face decoder and its
tokenizer, and its serialization. Building goes to ``build``, the saved form
to ``folder``."""

import logging
import tempfile
from pathlib import Path
from typing import Any

import srsly
import torch
from thinc.api import PyTorchGradScaler, PyTorchShim, get_torch_default_device

from ..build import build_transformer
from ..errors import PipelineFormatError
from ..folder import read_transformer, write_transformer
from ..hub import load_unquantized_base
from ..lora import AdapterMerge
from ..masking import UnmaskHandle
from ..quantization import DequantizedInference, memory_available
from ..settings import Training, TransformerSettings

logger = logging.getLogger("spacy_unmasked")


class UnmaskedShim(PyTorchShim):
    """Thinc shim around a Hugging Face decoder with unmasked layers."""

    def __init__(
        self, settings: TransformerSettings, *, mixed_precision: bool = False, grad_scaler_config: dict | None = None
    ):
        grad_scaler_config = dict(grad_scaler_config or {})
        grad_scaler_config.setdefault("enabled", mixed_precision)
        super().__init__(None, mixed_precision=mixed_precision, grad_scaler=PyTorchGradScaler(**grad_scaler_config))
        self.settings = settings
        self.tokenizer = None
        self.handle: UnmaskHandle | None = None
        self.base: dict[str, Any] | None = None
        self.embed_base = False
        self.merge = AdapterMerge()
        self.dequantize = True  # the component's ``dequantize`` switch, see load()
        self.dequantized = DequantizedInference()
        self.order_by_length = True  # the component's ``order_by_length`` switch, see batching
        self.max_batch_items = 4096  # padded pieces per decoder call when predicting by length
        self._embedded_source: str | None = None

    @property
    def model(self) -> torch.nn.Module | None:
        """The Hugging Face decoder (peft-wrapped with LoRA), or None before loading."""
        return self._model

    @property
    def is_loaded(self) -> bool:
        """Whether the decoder has been loaded."""
        return self._model is not None

    @property
    def hidden_size(self) -> int:
        """Width of the decoder's hidden states."""
        return self._model.config.hidden_size

    @property
    def trains(self) -> bool:
        """Whether any transformer weight receives gradients."""
        return self.settings.training != Training.FROZEN

    def load_pretrained(self) -> None:
        """Load tokenizer and base as the settings say, with fresh LoRA adapters."""
        built = build_transformer(self.settings, get_torch_default_device())
        self._model, self.tokenizer, self.handle, self.base = built.model, built.tokenizer, built.handle, built.base
        self.merge.allowed = False  # a new pipeline is for training: adapters stay separate

    def predict(self, inputs):
        """Run the decoder without gradients (a loaded LoRA pipeline with its
        adapters merged, see :class:`~spacy_unmasked.lora.AdapterMerge`)."""
        self.merge.before_predict(self._model)
        return super().predict(inputs)

    def begin_update(self, inputs):
        """Run the decoder for training; merged adapters are unmerged first and a
        dequantized base goes back to its quantized layers, for good."""
        self.merge.stop(self._model)
        self.dequantized.restore()
        return super().begin_update(inputs)

    @property
    def inference_form(self) -> str:
        """How the decoder predicts now, e.g. ``dequantized bfloat16, adapters merged``."""
        if self.dequantized.active:
            merged = ", adapters merged" if self.settings.training == Training.LORA else ""
            dtype = str(self._activation_dtype()).removeprefix("torch.")
            return f"dequantized {dtype}{merged}"
        if self.settings.quantization is not None:
            return f"quantized {self.settings.quantization.bits}-bit"
        if self.merge.allowed and self.merge.enabled:
            return "adapters merged"
        return "as trained"

    def _activation_dtype(self) -> torch.dtype:
        """The dtype the decoder's hidden states run in (that of its embeddings)."""
        return self._model.get_input_embeddings().weight.dtype

    def _dequantize_for_inference(self) -> None:
        """Predict with the quantized base dequantized and adapters folded in,
        when the component allows it and the device has the memory."""
        quantization = self.settings.quantization
        if quantization is None or not self.dequantize or self.settings.training == Training.FULL:
            return
        dtype = self._activation_dtype()
        needed = DequantizedInference.extra_bytes(self._model, dtype)
        available = memory_available(self.device)
        if available is not None and needed > 0.8 * available:
            logger.warning(
                "Keeping the quantized base for inference: dequantizing needs %.1f GB, %.1f GB are free.",
                needed / 1e9,
                available / 1e9,
            )
            return
        self.dequantized.apply(self._model, dtype)

    def save(self, path: Path) -> None:
        """Write the transformer to the folder ``path`` (see ``folder``)."""
        if not self.is_loaded:
            raise ValueError("Cannot save an uninitialized transformer: call nlp.initialize() first.")
        dequantized = self.dequantized.active
        self.dequantized.restore()  # the adapters are saved from their own layers
        base_model = None
        if self.embed_base:
            self.merge.stop(self._model)  # the stored base must not carry the adapters
            if self.settings.quantization is not None:
                source = self._embedded_source
                base_model = load_unquantized_base(
                    self.settings, source=source if source and Path(source).is_dir() else None
                )
        write_transformer(
            path,
            model=self._model,
            tokenizer=self.tokenizer,
            settings=self.settings,
            base=self.base,
            embed_base=self.embed_base,
            base_model=base_model,
        )
        if dequantized:
            self._dequantize_for_inference()

    def load(self, path: Path) -> None:
        """Rebuild the transformer from a folder written by :meth:`save`."""
        saved = read_transformer(Path(path))
        built = build_transformer(self.settings, get_torch_default_device(), saved=saved)
        self._model, self.tokenizer, self.handle, self.base = built.model, built.tokenizer, built.handle, built.base
        self.embed_base = saved.embedded_base
        self._embedded_source = str(saved.weights_dir) if saved.embedded_base else None
        self.merge.allowed = self.settings.training == Training.LORA and self.settings.quantization is None
        self._dequantize_for_inference()

    def to_bytes(self) -> bytes:
        """Pack the folder written by :meth:`save` (or nothing, before
        initialization) into msgpack: one entry per file."""
        if not self.is_loaded:
            return srsly.msgpack_dumps({"files": {}})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            self.save(folder)
            files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return srsly.msgpack_dumps({"files": files})

    def from_bytes(self, bytes_data: bytes) -> "UnmaskedShim":
        """Inverse of :meth:`to_bytes`."""
        msg = srsly.msgpack_loads(bytes_data)
        if not msg.get("files"):
            return self
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in msg["files"].items():
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise PipelineFormatError(f"Refusing to unpack {name!r}: the saved transformer is corrupted.")
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            self.load(Path(tmp))
        return self
