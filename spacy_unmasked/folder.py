"""The saved form of an unmasked transformer: a folder of files.

A transformer folder holds ``unmasked.json`` (format version, settings, base
identity, file sizes and checksums), ``tokenizer/``, and the trained weights:
``adapter.safetensors`` (LoRA) or ``weights/`` (a Hugging Face folder of
safetensors shards, for full fine-tuning or an embedded base). Writes are
atomic: the files go to a hidden sibling folder that replaces the target only
once complete. Two entry points: :func:`write_transformer` and
:func:`read_transformer`.
"""

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .about import __version__
from .errors import PipelineFormatError
from .lora import adapter_state
from .settings import Training, TransformerSettings

FORMAT_VERSION = 2
MANIFEST = "unmasked.json"
TOKENIZER_DIR = "tokenizer"
ADAPTER_FILE = "adapter.safetensors"
WEIGHTS_DIR = "weights"
_CHECKSUM_LIMIT = 64 * 2**20


@dataclass(frozen=True)
class SavedTransformer:
    """What :func:`read_transformer` found in a transformer folder."""

    settings: TransformerSettings
    base: dict[str, Any]
    tokenizer_dir: Path
    adapter: dict[str, torch.Tensor] | None
    weights_dir: Path | None

    @property
    def embedded_base(self) -> bool:
        """Whether the base weights are stored in the folder (and not only named)."""
        return self.weights_dir is not None and self.settings.training != Training.FULL


# Writing ------------------------------------------------------------------


def write_transformer(
    path: Path,
    *,
    model: torch.nn.Module,
    tokenizer,
    settings: TransformerSettings,
    base: dict[str, Any],
    embed_base: bool = False,
    base_model: torch.nn.Module | None = None,
) -> None:
    """Save a transformer to the folder ``path`` atomically (see module docs).
    ``base_model``: the weights to embed when ``model`` cannot give them (a
    quantized base is embedded unquantized)."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.saving-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _write_files(
            staging,
            model=model,
            tokenizer=tokenizer,
            settings=settings,
            base=base,
            embed_base=embed_base,
            base_model=base_model,
        )
        _replace_dir(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_files(
    path: Path, *, model, tokenizer, settings: TransformerSettings, base: dict, embed_base: bool, base_model
) -> None:
    tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
    if settings.training == Training.LORA:
        from safetensors.torch import save_file

        state = adapter_state(model)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / ADAPTER_FILE))
    if settings.training == Training.FULL or embed_base:
        _save_base_weights(base_model if base_model is not None else model, path / WEIGHTS_DIR)
    manifest = {
        "format": FORMAT_VERSION,
        "spacy_unmasked": __version__,
        "settings": settings.to_dict(),
        "base": base,
        "files": _file_digests(path),
    }
    _write_manifest(path, manifest)


def _save_base_weights(model: torch.nn.Module, path: Path) -> None:
    """Save the base decoder (without LoRA layers) as safetensors shards."""
    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        raise ValueError("A quantized base cannot be stored as it is: pass its unquantized weights (base_model).")
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


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf8")


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
        if entry["size"] < _CHECKSUM_LIMIT:
            entry["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
        digests[str(file.relative_to(path))] = entry
    return digests


# Reading ------------------------------------------------------------------


def read_transformer(path: Path) -> SavedTransformer:
    """Read and check a folder written by :func:`write_transformer`: manifest,
    file sizes and checksums, settings and the LoRA adapter. Base weights are
    not loaded here."""
    path = Path(path)
    manifest = _read_manifest(path)
    _check_files(path, manifest.get("files", {}))
    settings = TransformerSettings.from_dict(manifest["settings"])
    adapter = _read_adapter(path / ADAPTER_FILE) if settings.training == Training.LORA else None
    if manifest.get("format", 1) == 1:  # format 1 flagged an embedded base separately
        stored = manifest.get("weights") == "full" or manifest.get("embedded_base", False)
    else:
        stored = (path / WEIGHTS_DIR).is_dir()
    return SavedTransformer(
        settings=settings,
        base=manifest["base"],
        tokenizer_dir=path / TOKENIZER_DIR,
        adapter=adapter,
        weights_dir=path / WEIGHTS_DIR if stored else None,
    )


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


def _check_files(path: Path, expected: dict[str, dict[str, Any]]) -> None:
    """Raise if a file listed in the manifest is missing, truncated or changed."""
    for name, entry in expected.items():
        file = path / name
        if name == ADAPTER_FILE and not file.exists():
            continue  # reported by _read_adapter with its own message
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


def _read_adapter(adapter_path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not adapter_path.exists():
        raise PipelineFormatError(f"The LoRA adapter {adapter_path} is missing: save the pipeline again.")
    try:
        return load_file(str(adapter_path))
    except (SafetensorError, OSError) as error:
        raise PipelineFormatError(
            f"The LoRA adapter {adapter_path} is corrupted ({error}): save the pipeline again."
        ) from error
