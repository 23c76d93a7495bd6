"""Write .spacy splits as token<TAB>BIO text files (one token per line, a blank
line between sentences): the format scripts/convert_conll.py reads for the
`bio` and `absa` tasks. The paper workflow's offline stand-in uses it."""

from pathlib import Path

import spacy
import typer
from spacy.tokens import DocBin


def main(corpus: Path, output: Path, splits: str = "train,dev,test"):
    """Convert CORPUS/<split>.spacy to OUTPUT/<split>.txt for each split."""
    nlp = spacy.blank("en")
    output.mkdir(parents=True, exist_ok=True)
    for split in splits.split(","):
        lines = []
        for doc in DocBin().from_disk(corpus / f"{split}.spacy").get_docs(nlp.vocab):
            for token in doc:
                tag = f"{token.ent_iob_}-{token.ent_type_}" if token.ent_iob_ in ("B", "I") else "O"
                lines.append(f"{token.text}\t{tag}")
            lines.append("")
        (output / f"{split}.txt").write_text("\n".join(lines), encoding="utf8")
        print(f"{corpus / f'{split}.spacy'} -> {output / f'{split}.txt'}")


if __name__ == "__main__":
    typer.run(main)
