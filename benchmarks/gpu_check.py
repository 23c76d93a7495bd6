"""A short GPU check of the bf16/CUDA path: a few LoRA training steps with sdpa
in bfloat16 (and 4-bit QLoRA when bitsandbytes is installed), then inference,
printing seconds per update, words per second and peak GPU memory.

    python benchmarks/gpu_check.py --model assets/smollm2-135m      # on a GPU machine
    python benchmarks/gpu_check.py --model tiny --allow-cpu          # smoke test of the script itself
"""

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import model_path, texts  # noqa: E402


def run(model: str, *, quantize: bool, steps: int, batch_size: int) -> dict:
    """Train ``steps`` LoRA updates and time inference; returns the measurements."""
    import numpy
    import torch
    from spacy.training import Example

    from tests.pipelines import lora, make_nlp

    settings = {
        "lora": lora(r=16, targets=("q_proj", "v_proj"), dropout=0.1),
        "unmask": "0011",
        "attn_implementation": "sdpa",
        "torch_dtype": "bfloat16" if torch.cuda.is_available() else "float32",
    }
    if quantize:
        settings["quantization"] = {"@misc": "spacy-unmasked.BitsAndBytes.v1", "bits": 4}
    nlp = make_nlp(model, components=("ner",), **settings)
    sample = texts(batch_size * (steps + 1) + 256)
    examples = []
    for text in sample[: batch_size * (steps + 1)]:
        doc = nlp.make_doc(text)
        examples.append(Example.from_dict(doc, {"entities": ["O"] * (len(doc) - 1) + ["U-LOC"]}))
    optimizer = nlp.initialize(lambda: examples[:64])
    shim = nlp.get_pipe("transformer").model.shims[0]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps):
        start = time.perf_counter()
        losses = nlp.update(examples[step * batch_size : (step + 1) * batch_size], sgd=optimizer)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    infer_texts = sample[-256:]
    words = sum(len(nlp.make_doc(t)) for t in infer_texts)
    start = time.perf_counter()
    docs = list(nlp.pipe(infer_texts, batch_size=64))
    seconds = time.perf_counter() - start
    base_dtype = next(p.dtype for n, p in shim._model.named_parameters() if "lora_" not in n)
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "quantized": quantize,
        "base_dtype": str(base_dtype),
        "lora_dtype": str(next(p.dtype for p in shim._model.parameters() if p.requires_grad)),
        "seconds_per_update": sorted(times)[len(times) // 2],
        "final_ner_loss": float(losses["ner"]),
        "words_per_second": words / seconds,
        "finite_features": all(numpy.isfinite(d._.trf_data.model_output.last_hidden_state).all() for d in docs),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/smollm2-135m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke test only)")
    args = parser.parse_args()
    import spacy
    import torch

    if torch.cuda.is_available():
        spacy.require_gpu()
    elif not args.allow_cpu:
        sys.exit("No CUDA GPU found: this check is for the bf16/CUDA path (use --allow-cpu for a smoke test).")
    model = model_path(args.model)
    results = [run(model, quantize=False, steps=args.steps, batch_size=args.batch_size)]
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        results.append(run(model, quantize=True, steps=args.steps, batch_size=args.batch_size))
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
