"""The PyTorch shim: owns the Hugging Face decoder and tokenizer and saves a
pipeline as adapter-only (LoRA), full safetensors shards (full fine-tuning) or
settings only (frozen base), never as one pickled blob."""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import srsly
import torch
from thinc.api import PyTorchGradScaler, PyTorchShim, get_torch_default_device

from ..about import __version__
from ..loading import (
    BaseModelMismatchError,
    apply_lora,
    base_fingerprint,
    build_transformer,
    check_architecture,
    check_weights,
    configure_training,
    load_base_config,
    load_base_model,
    load_tokenizer,
)
from ..masking import UnmaskHandle, unmask
from ..settings import TransformerSettings
from ..spec import resolve_spec

FORMAT_VERSION = 1
MANIFEST = "unmasked.json"
TOKENIZER_DIR = "tokenizer"
ADAPTER_FILE = "adapter.safetensors"
WEIGHTS_DIR = "weights"


class PipelineFormatError(ValueError):
    """A saved transformer that cannot be loaded as it is."""


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
        self.fingerprint: dict[str, Any] | None = None
        self.embed_base = False

    @property
    def is_loaded(self) -> bool:
        """Whether the decoder has been loaded."""
        return self._model is not None

    @property
    def hidden_size(self) -> int:
        """Width of the decoder's hidden states."""
        return self._model.config.hidden_size

    @property
    def has_trainable_weights(self) -> bool:
        """Whether any transformer weight receives gradients."""
        return any(p.requires_grad for p in self._model.parameters())

    def load_pretrained(self) -> None:
        """Load tokenizer and base as the settings say, with fresh LoRA adapters."""
        settings = self.settings
        config = load_base_config(settings)
        self.tokenizer = load_tokenizer(settings.name, revision=settings.revision, **settings.tokenizer_config)
        self._model, self.handle = build_transformer(settings, get_torch_default_device(), config=config)
        self.fingerprint = base_fingerprint(settings, self._model)

    # Saving ---------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the transformer to the folder ``path``, atomically: the files go
        to a hidden sibling folder that replaces ``path`` only once complete."""
        if not self.is_loaded:
            raise ValueError("Cannot save an uninitialized transformer: call nlp.initialize() first.")
        path = Path(path)
        staging = path.with_name(f".{path.name}.saving-{os.getpid()}")
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            self._write(staging)
            _replace_dir(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _write(self, path: Path) -> None:
        self.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
        if self.settings.lora is not None:
            from peft import get_peft_model_state_dict
            from safetensors.torch import save_file

            state = {
                k: v.detach().contiguous().cpu()
                for k, v in get_peft_model_state_dict(self._model, save_embedding_layers=False).items()
            }
            save_file(state, str(path / ADAPTER_FILE))
            weights = "lora"
        elif self.settings.trains_base:
            weights = "full"
        else:
            weights = "none"
        if weights == "full" or self.embed_base:
            _save_base_weights(self._model, path / WEIGHTS_DIR)
        manifest = {
            "format": FORMAT_VERSION,
            "spacy_unmasked": __version__,
            "weights": weights,
            "embedded_base": weights != "full" and self.embed_base,
            "settings": self.settings.to_dict(),
            "base": self.fingerprint,
            "files": _file_digests(path),
        }
        _write_manifest(path, manifest)

    def load(self, path: Path) -> None:
        """Rebuild the transformer from a folder written by :meth:`save`."""
        path = Path(path)
        manifest = _read_manifest(path)
        _check_files(path, manifest.get("files", {}))
        self._check_settings(TransformerSettings.from_dict(manifest["settings"]), manifest["base"])
        settings, device = self.settings, get_torch_default_device()
        self.tokenizer = load_tokenizer(str(path / TOKENIZER_DIR))
        stored_base = manifest["weights"] == "full" or manifest.get("embedded_base", False)
        if stored_base:
            model = load_base_model(settings, device, source=str(path / WEIGHTS_DIR), for_training=False)
            self.fingerprint = manifest["base"]
        else:
            config = load_base_config(settings)
            check_architecture(manifest["base"], settings, config)
            model = load_base_model(settings, device, config=config, for_training=False)
            self.fingerprint = base_fingerprint(settings, model)
            check_weights(manifest["base"], self.fingerprint)
        self.embed_base = manifest.get("embedded_base", False)
        configure_training(model, settings)
        if manifest["weights"] == "lora":
            model = apply_lora(model, settings.lora)
            _load_adapter(model, path / ADAPTER_FILE)
        self._model = model
        self.handle = unmask(model, settings.unmask)

    def _check_settings(self, saved: TransformerSettings, base: dict[str, Any]) -> None:
        """Refuse a config whose settings would give the saved weights another meaning."""
        current = self.settings
        num_layers = saved.num_layers or base["num_hidden_layers"]
        comparisons = {
            "unmask": (resolve_spec(saved.unmask, num_layers), resolve_spec(current.unmask, num_layers)),
            "lora": (_lora_shape(saved.lora), _lora_shape(current.lora)),
        }
        for key in ("freeze_base", "add_bos", "num_layers"):
            comparisons[key] = (getattr(saved, key), getattr(current, key))
        for key, (was, now) in comparisons.items():
            if was != now:
                raise PipelineFormatError(
                    f"The saved transformer was trained with {key} = {getattr(saved, key)!r} but the config now "
                    f"says {getattr(current, key)!r}: restore the saved value in the config (or train a new pipeline)."
                )

    def to_bytes(self) -> bytes:
        """Pack the folder written by :meth:`save` (or only the settings, before
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


def _save_base_weights(model: torch.nn.Module, path: Path) -> None:
    """Save the base decoder (without LoRA layers) as a Hugging Face folder of
    safetensors shards."""
    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        raise ValueError(
            "A quantized base cannot be stored with the pipeline: load it unquantized "
            "(quantization = null) to embed it, or keep it referenced by name."
        )
    if hasattr(model, "get_base_model"):
        base = model.get_base_model()
        state = {
            name.replace(".base_layer.", "."): tensor
            for name, tensor in base.state_dict().items()
            if "lora_" not in name
        }
        base.save_pretrained(str(path), state_dict=state, safe_serialization=True, max_shard_size="2GB")
    else:
        model.save_pretrained(str(path), safe_serialization=True, max_shard_size="2GB")


def _lora_shape(lora) -> tuple | None:
    """The LoRA settings that decide what the saved adapter weights mean."""
    return None if lora is None else (lora.r, lora.alpha, tuple(lora.target_modules))


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``, replacing what is there."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _file_digests(path: Path) -> dict[str, dict[str, Any]]:
    """Size of every file under ``path``, plus a SHA-256 of those under 64 MB."""
    digests = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        entry: dict[str, Any] = {"size": file.stat().st_size}
        if entry["size"] < 64 * 2**20:
            entry["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
        digests[str(file.relative_to(path))] = entry
    return digests


def _check_files(path: Path, expected: dict[str, dict[str, Any]]) -> None:
    """Raise if a file listed in the manifest is missing, truncated or changed."""
    for name, entry in expected.items():
        file = path / name
        if name == ADAPTER_FILE and not file.exists():
            continue  # reported by _load_adapter with its own message
        problem = None
        if not file.is_file():
            problem = "is missing"
        elif file.stat().st_size != entry["size"]:
            problem = f"has {file.stat().st_size} bytes instead of {entry['size']}"
        elif "sha256" in entry and hashlib.sha256(file.read_bytes()).hexdigest() != entry["sha256"]:
            problem = "has changed (checksum)"
        if problem:
            raise PipelineFormatError(
                f"The saved transformer in {path} is incomplete or changed: {name} {problem}. "
                "Save or copy the pipeline again."
            )


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf8")


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise PipelineFormatError(
            f"{manifest_path} is missing: this folder was not saved by spacy-unmasked or the save "
            "was interrupted. Save the pipeline again with nlp.to_disk()."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf8"))
    except json.JSONDecodeError as error:
        raise PipelineFormatError(f"{manifest_path} is corrupted ({error}): save the pipeline again.") from error
    if manifest.get("format", 0) > FORMAT_VERSION:
        raise PipelineFormatError(
            f"This pipeline was saved by spacy-unmasked {manifest.get('spacy_unmasked')} in format "
            f"{manifest['format']}, newer than this version ({__version__}) reads: "
            "pip install -U spacy-unmasked."
        )
    return manifest


def _load_adapter(model: torch.nn.Module, adapter_path: Path) -> None:
    """Load saved LoRA weights, refusing an adapter that does not fit the model."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not adapter_path.exists():
        raise PipelineFormatError(f"The LoRA adapter {adapter_path} is missing: save the pipeline again.")
    try:
        state = load_file(str(adapter_path))
    except (SafetensorError, OSError) as error:
        raise PipelineFormatError(
            f"The LoRA adapter {adapter_path} is corrupted ({error}): save the pipeline again."
        ) from error
    expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise BaseModelMismatchError(
            f"The LoRA adapter {adapter_path} does not fit this model (missing {len(missing)}, unexpected "
            f"{len(unexpected)}, wrong shape {len(wrong_shape)} tensors, e.g. "
            f"{(missing + unexpected + wrong_shape)[:2]}): load it with the base model and LoRA settings "
            "it was trained with."
        )
    set_peft_model_state_dict(model, state)
