"""Convert user-supplied column files (CoNLL-2003 NER, CoNLL-2000 chunking,
SemEval-14 ABSA in BIO form) into train/dev/test .spacy files. These data sets
cannot be fetched here: the command fails with where to get them."""

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import spacy
import typer
from spacy.tokens import Doc, DocBin
from spacy.training import biluo_tags_to_spans, iob_to_biluo

# task: (file names for train, dev, test — None = carve dev from train), where to get the data
TASKS = {
    "conll03": (
        ("eng.train", "eng.testa", "eng.testb"),
        "CoNLL-2003 English NER (Reuters RCV1, licence needed): https://www.clips.uantwerpen.be/conll2003/ner/ "
        "— put eng.train, eng.testa and eng.testb (token POS chunk NER columns) in the folder.",
    ),
    "conll2000": (
        ("train.txt", None, "test.txt"),
        "CoNLL-2000 chunking: https://www.clips.uantwerpen.be/conll2000/chunking/ — put the unzipped "
        "train.txt and test.txt (token POS chunk columns) in the folder.",
    ),
    "absa": (
        ("train.txt", "dev.txt", "test.txt"),
        "SemEval-2014 Task 4 restaurant aspect terms: https://alt.qcri.org/semeval2014/task4/ — convert the "
        "XML to one token and its BIO aspect tag per line (blank line between sentences) as train.txt, dev.txt "
        "and test.txt.",
    ),
    "bio": (
        ("train.txt", "dev.txt", "test.txt"),
        "Any span-labelling data as one token and its BIO tag per line (blank line between sentences) in "
        "train.txt, dev.txt and test.txt; `spacy project run paper-standin` writes the WNUT-16 split so.",
    ),
}


def read_columns(path: Path) -> Iterator[tuple[list[str], list[str]]]:
    """Yield (words, tags) per sentence: first column = token, last column = tag;
    blank (or whitespace-only) lines end sentences; -DOCSTART- lines are skipped."""
    words: list[str] = []
    tags: list[str] = []
    for line in path.read_text(encoding="utf8").splitlines():
        columns = line.split("\t") if "\t" in line.strip("\t") else line.split()
        if not line.strip() or columns[0] == "-DOCSTART-":
            if words:
                yield words, tags
            words, tags = [], []
            continue
        words.append(columns[0])
        tags.append(columns[-1])
    if words:
        yield words, tags


def to_doc(vocab, words: list[str], tags: list[str]) -> Doc:
    """A Doc whose entities come from IOB1 or IOB2 tags, mirrored in doc.spans['sc']."""
    doc = Doc(vocab, words=words)
    doc.ents = biluo_tags_to_spans(doc, iob_to_biluo(tags))
    doc.spans["sc"] = list(doc.ents)
    return doc


def write_split(docs: list[Doc], path: Path) -> None:
    """Save docs as .spacy and print a one-line summary."""
    DocBin(docs=docs, store_user_data=False).to_disk(path)
    print(f"{path.name}: {len(docs)} docs, {sum(len(d) for d in docs)} tokens, {sum(len(d.ents) for d in docs)} spans")


def main(task: str, source: str, output: Path, dev_fraction: float = 0.1, seed: int = 0):
    """Convert TASK data (conll03, conll2000 or absa) from the folder SOURCE into OUTPUT/*.spacy."""
    if task not in TASKS:
        sys.exit(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    names, where = TASKS[task]
    folder = Path(source)
    missing = [name for name in names if name and not (source.strip() and (folder / name).is_file())]
    if missing:
        sys.exit(
            f"{task} data not found in {source or '(no folder given)'} (missing: {', '.join(missing)}). "
            f"{where} Then pass the folder: spacy project run paper --vars.paper_task {task} --vars.paper_data DIR"
        )
    vocab = spacy.blank("en").vocab
    splits = {
        split: [to_doc(vocab, w, t) for w, t in read_columns(folder / name)] if name else []
        for split, name in zip(("train", "dev", "test"), names, strict=True)
    }
    if not splits["dev"]:
        random.Random(seed).shuffle(splits["train"])
        n_dev = int(len(splits["train"]) * dev_fraction)
        splits["dev"], splits["train"] = splits["train"][:n_dev], splits["train"][n_dev:]
    output.mkdir(parents=True, exist_ok=True)
    for split, docs in splits.items():
        write_split(docs, output / f"{split}.spacy")


if __name__ == "__main__":
    typer.run(main)
