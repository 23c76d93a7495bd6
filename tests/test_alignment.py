import numpy
import pytest
import spacy

from spacy_unmasked.pieces import encode_spans

from .helpers import tiny_tokenizer

TEXT = "Apple Inc hired  Jane Smith."


def aligned_pieces(kind, text=TEXT, add_bos=True, max_length=512):
    nlp = spacy.blank("en")
    doc = nlp(text)
    tokenizer = tiny_tokenizer(kind)
    batch = encode_spans(tokenizer, [[doc[:]]], max_length=max_length, add_bos=add_bos)
    flat = [piece for row in batch.wordpieces.strings for piece in row]
    width = batch.wordpieces.input_ids.shape[1]
    strings = [s for row in batch.wordpieces.strings for s in row + [None] * (width - len(row))]
    out = {}
    for token, start, length in zip(
        doc, numpy.cumsum(batch.align.lengths) - batch.align.lengths, batch.align.lengths, strict=False
    ):
        out[token.text] = [strings[i] for i in batch.align.dataXd[start : start + length]]
    return doc, batch, out, flat


@pytest.mark.parametrize("kind,inc_pieces", [("byte-level", ["ĠIn", "c"]), ("metaspace", ["▁In", "c"])])
def test_leading_space_piece_belongs_to_its_own_token(kind, inc_pieces):
    doc, batch, out, _ = aligned_pieces(kind)
    assert [t.text for t in doc] == ["Apple", "Inc", "hired", " ", "Jane", "Smith", "."]
    assert batch.wordpieces.strings[0][0] == "<s>"  # BOS added deliberately, aligned to nothing
    assert out["Apple"] == (["Ap", "ple"] if kind == "byte-level" else ["▁Apple"])
    assert out["Inc"] == inc_pieces
    assert all("<s>" not in pieces for pieces in out.values())
    # "hired" never takes the piece that carries the space before "Jane"
    assert all("Jan" not in piece for piece in out["hired"])
    assert all(len(pieces) > 0 for pieces in out.values())


def test_no_bos_and_piece_indices_cover_rows():
    doc, batch, _out, _flat = aligned_pieces("byte-level", add_bos=False)
    assert batch.wordpieces.strings[0][0] == "Ap"
    assert batch.align.lengths.shape[0] == len(doc)
    assert batch.wordpieces.lengths == [len(batch.wordpieces.strings[0])]


def test_long_span_is_split_so_every_token_is_covered():
    text = " ".join(["Barack Obama visited Berlin."] * 40)
    doc, batch, _out, _ = aligned_pieces("byte-level", text=text, max_length=16)
    assert batch.wordpieces.input_ids.shape[1] <= 16
    assert len(batch.spans[0]) > 1
    assert (batch.align.lengths > 0).all()
    covered = sorted(t.i for span in batch.spans[0] for t in span)
    assert covered == list(range(len(doc)))
    # right padding: mask rows are ones then zeros
    mask = batch.wordpieces.attention_mask
    assert all((numpy.diff(row) <= 0).all() for row in mask)
