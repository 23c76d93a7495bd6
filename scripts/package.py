"""Build an installable wheel of a trained pipeline with `spacy package`,
optionally embedding the base model so that the wheel is self-contained."""

import subprocess
import sys
import tempfile
from pathlib import Path

import spacy
import typer

from spacy_unmasked import embed_base


def main(
    model: Path,
    output: Path,
    name: str = typer.Option(..., help="Package name without the language prefix, e.g. unmasked_smollm2"),
    version: str = typer.Option("0.1.0"),
    embed: bool = typer.Option(False, "--embed-base", help="Store the base weights in the wheel"),
    keep_features: bool = typer.Option(False, "--keep-features", help="Keep doc._.trf_data in processed docs"),
):
    """Package MODEL into OUTPUT/<lang>_<name>-<version>/dist/*.whl and print its size."""
    nlp = spacy.load(model)
    if embed:
        embed_base(nlp)
    if not keep_features and "unmasked_release_features" not in nlp.pipe_names:
        nlp.add_pipe("unmasked_release_features", last=True)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pipeline"
        nlp.meta["name"] = name
        nlp.meta["version"] = version
        nlp.to_disk(staged)
        command = [
            sys.executable,
            "-m",
            "spacy",
            "package",
            str(staged),
            str(output),
            "--name",
            name,
            "--version",
            version,
            "--build",
            "wheel",
            "--force",
        ]
        subprocess.run(command, check=True)
    wheel = next((output / f"{nlp.lang}_{name}-{version}" / "dist").glob("*.whl"))
    size = wheel.stat().st_size / 2**20
    print(f"Built {wheel} ({size:.1f} MiB{', base embedded' if embed else ''})")


if __name__ == "__main__":
    typer.run(main)
