"""Train and evaluate one pipeline per unmask spec, with the same seed and
settings, skipping specs that already have metrics (so a sweep resumes)."""

import itertools
import subprocess
import sys
from pathlib import Path

import typer


def expand_specs(specs: str) -> list[str]:
    """Comma-separated specs; ``bits:M`` expands to all 2^M bit strings of length M."""
    out: list[str] = []
    for item in (s.strip() for s in specs.split(",") if s.strip()):
        if item.startswith("bits:"):
            m = int(item.split(":", 1)[1])
            out.extend("".join(bits) for bits in itertools.product("01", repeat=m))
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def main(
    config: Path,
    corpus: Path,
    training_dir: Path,
    metrics_dir: Path,
    specs: str = typer.Option("bits:4", help="Comma-separated specs, or bits:M for all 2^M bit strings"),
    base_model: str = typer.Option(..., help="Base model (hub id or folder)"),
    max_steps: int = 600,
    eval_frequency: int = 100,
    num_layers: str = typer.Option("null", help="First k decoder blocks, or null for all"),
    seed: int = 0,
    gpu_id: int = -1,
    test_split: str = "test.spacy",
):
    """For each spec: `spacy train` CONFIG on CORPUS/train+dev, then evaluate on CORPUS/TEST_SPLIT."""
    scripts = Path(__file__).parent
    for spec in expand_specs(specs):
        metrics = metrics_dir / f"{spec}.json"
        if metrics.exists():
            print(f"{spec}: metrics exist, skipped")
            continue
        output = training_dir / spec
        subprocess.run(
            [
                sys.executable,
                "-m",
                "spacy",
                "train",
                str(config),
                "--output",
                str(output),
                "--gpu-id",
                str(gpu_id),
                f"--paths.train={corpus / 'train.spacy'}",
                f"--paths.dev={corpus / 'dev.spacy'}",
                f"--paths.base_model={base_model}",
                f'--components.transformer.model.unmask="{spec}"',
                f"--components.transformer.model.num_layers={num_layers}",
                f"--training.max_steps={max_steps}",
                f"--training.eval_frequency={eval_frequency}",
                f"--system.seed={seed}",
            ],
            check=True,
        )
        subprocess.run(
            [
                sys.executable,
                str(scripts / "evaluate.py"),
                str(output / "model-best"),
                str(corpus / test_split),
                str(metrics),
                "--name",
                spec,
            ],
            check=True,
        )


if __name__ == "__main__":
    typer.run(main)
