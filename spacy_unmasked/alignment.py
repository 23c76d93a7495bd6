"""Piece offsets → spaCy tokens.

Each token maps to exactly the pieces that overlap its characters. A spaCy
token never includes the whitespace after it, so a byte-level piece such as
``ĠInc`` (which carries the space before ``Inc``) aligns to ``Inc`` only and
never leaks into the previous token. A piece that covers only whitespace
between tokens (the second space of ``"Hello  world"``) aligns to the token
before it, as in spacy-transformers.
"""

from collections.abc import Sequence

import numpy
from spacy.tokens import Span
from thinc.types import Ragged


def align_span(span: Span, piece_offsets: numpy.ndarray) -> list[numpy.ndarray]:
    """For each token of ``span``, the indices of the pieces that cover it.

    ``piece_offsets`` holds ``(start, end)`` character offsets relative to the
    span's text. A token that no piece overlaps (text the tokenizer dropped)
    borrows the piece that starts nearest to it, so every token gets a vector.
    """
    base = span.start_char
    starts = numpy.fromiter((t.idx - base for t in span), dtype="i", count=len(span))
    ends = starts + numpy.fromiter((len(t.text) for t in span), dtype="i", count=len(span))
    if len(piece_offsets) == 0:
        return [numpy.zeros((0,), dtype="i") for _ in range(len(span))]
    p_start, p_end = piece_offsets[:, 0], piece_offsets[:, 1]
    overlaps = (p_start[None, :] < ends[:, None]) & (p_end[None, :] > starts[:, None]) & (p_end > p_start)[None, :]
    whitespace = (p_end > p_start) & ~overlaps.any(axis=0)
    if whitespace.any():  # give each such piece to the last token that starts before it
        before = numpy.searchsorted(starts, p_start[whitespace], side="right") - 1
        overlaps[numpy.maximum(before, 0), numpy.flatnonzero(whitespace)] = True
    aligned = []
    for row, token_start in zip(overlaps, starts, strict=False):
        found = numpy.flatnonzero(row).astype("i")
        if found.size == 0:
            found = numpy.array([numpy.abs(p_start - token_start).argmin()], dtype="i")
        aligned.append(found)
    return aligned


def build_alignment(
    spans: Sequence[Span], per_span: Sequence[list[numpy.ndarray]], *, width: int, first_pieces: Sequence[int]
) -> Ragged:
    """Merge per-span alignments into one ragged array over the padded batch.

    Tokens are numbered doc by doc, in the order their docs appear in
    ``spans``; piece ``j`` of row ``r`` is ``r * width + first_pieces[r] + j``.
    Tokens covered by several (overlapping) spans collect the pieces of all.
    """
    doc_offsets = {}
    num_tokens = 0
    for span in spans:
        if id(span.doc) not in doc_offsets:
            doc_offsets[id(span.doc)] = num_tokens
            num_tokens += len(span.doc)
    token_ids, piece_ids = [], []
    for row, (span, aligned) in enumerate(zip(spans, per_span, strict=False)):
        first_token = doc_offsets[id(span.doc)] + span.start
        for i, pieces in enumerate(aligned):
            token_ids.append(numpy.full(pieces.shape, first_token + i, dtype="i"))
            piece_ids.append(pieces + row * width + first_pieces[row])
    if not token_ids:
        return Ragged(numpy.zeros((0,), dtype="i"), numpy.zeros((num_tokens,), dtype="i"))
    pairs = numpy.unique(numpy.stack([numpy.concatenate(token_ids), numpy.concatenate(piece_ids)], axis=1), axis=0)
    lengths = numpy.bincount(pairs[:, 0], minlength=num_tokens).astype("i")
    return Ragged(pairs[:, 1].astype("i"), lengths)
