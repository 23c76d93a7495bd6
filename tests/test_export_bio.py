"""The paper workflow's stand-in: .spacy → token<TAB>BIO → .spacy keeps every entity."""

import subprocess
import sys
from pathlib import Path

import spacy
from spacy.tokens import DocBin

from .test_configs import make_corpus

SCRIPTS = Path(__file__).parent.parent / "scripts"


def test_export_then_convert_as_task_bio_keeps_tokens_and_entities(tmp_path):
    corpus = make_corpus(tmp_path / "corpus").parent
    for split in ("dev", "test"):
        (corpus / f"{split}.spacy").write_bytes((corpus / "train.spacy").read_bytes())
    run = [sys.executable]
    subprocess.run([*run, str(SCRIPTS / "export_bio.py"), str(corpus), str(tmp_path / "bio")], check=True)
    lines = (tmp_path / "bio" / "train.txt").read_text().splitlines()
    assert lines[:3] == ["Apple\tB-ORG", "Inc.\tI-ORG", "hired\tO"]
    subprocess.run(
        [*run, str(SCRIPTS / "convert_conll.py"), "bio", str(tmp_path / "bio"), str(tmp_path / "back")], check=True
    )
    nlp = spacy.blank("en")
    original = list(DocBin().from_disk(corpus / "test.spacy").get_docs(nlp.vocab))
    back = list(DocBin().from_disk(tmp_path / "back" / "test.spacy").get_docs(nlp.vocab))
    assert [[t.text for t in d] for d in back] == [[t.text for t in d] for d in original]
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in back] == [
        [(e.start, e.end, e.label_) for e in d.ents] for d in original
    ]
