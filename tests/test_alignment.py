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


@pytest.mark.parametrize("repeat", [1, 2])
@pytest.mark.parametrize("max_length", [512, 12])
def test_repeated_rows_align_to_the_last_copy_of_the_plain_rows_pieces(repeat, max_length):
    """With repeat r and r + 1 times the piece budget, the rows split the same way, and each token's
    pieces are its plain (r = 0) pieces moved r copies of its row to the right, split rows included."""
    text = " ".join(["Barack Obama visited Berlin."] * 6)
    doc = spacy.blank("en")(text)
    tokenizer = tiny_tokenizer("byte-level")
    plain = encode_spans(tokenizer, [[doc[:]]], max_length=max_length, add_bos=True)
    longer = 1 + (repeat + 1) * (max_length - 1)
    repeated = encode_spans(tokenizer, [[doc[:]]], max_length=longer, add_bos=True, repeat=repeat)
    assert [s.start for s in repeated.spans[0]] == [s.start for s in plain.spans[0]]
    assert (len(plain.spans[0]) > 1) == (max_length == 12)
    assert numpy.array_equal(repeated.align.lengths, plain.align.lengths)
    width, repeated_width = plain.wordpieces.input_ids.shape[1], repeated.wordpieces.input_ids.shape[1]
    pieces_per_row = [length - 1 for length in plain.wordpieces.lengths]
    row, position = numpy.divmod(plain.align.dataXd, width)
    expected = row * repeated_width + position + repeat * numpy.asarray(pieces_per_row)[row]
    assert numpy.array_equal(repeated.align.dataXd, expected)
    for r, ids in enumerate(plain.wordpieces.input_ids):
        n = pieces_per_row[r]
        copies = repeated.wordpieces.input_ids[r, 1 : 1 + (repeat + 1) * n].reshape(repeat + 1, n)
        assert (copies == ids[1 : 1 + n]).all()


def test_a_token_longer_than_one_copy_keeps_its_first_pieces_with_a_warning(caplog):
    """A single token cannot be split: it keeps the pieces that fit one copy, and the log says so."""
    doc = spacy.blank("en")("Supercalifragilistic is long")
    tokenizer = tiny_tokenizer("byte-level")
    pieces = tokenizer("Supercalifragilistic", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 3
    with caplog.at_level("WARNING", logger="spacy_unmasked"):
        batch = encode_spans(tokenizer, [[doc[:]]], max_length=7, add_bos=True, repeat=1)
    assert f"'Supercalifragilistic' has {len(pieces)} pieces, more than the 3 that fit" in caplog.text
    assert "Raise max_length or lower repeat" in caplog.text
    first_row = batch.wordpieces.input_ids[0]
    assert list(first_row[1:4]) == pieces[:3] and list(first_row[4:7]) == pieces[:3]
    caplog.clear()
    with caplog.at_level("WARNING", logger="spacy_unmasked"):
        encode_spans(tokenizer, [[doc[:]]], max_length=1 + 2 * len(pieces), add_bos=True, repeat=1)
    assert caplog.text == ""
