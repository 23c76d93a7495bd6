"""Docs → right-padded piece batches, with spans split to fit ``max_length``.

With sequence repetition (``repeat = r``) each row holds BOS and then the
span's pieces r + 1 times in a row; tokens align to the pieces of the last
copy, which have seen the whole span once already, even through causal layers.
"""

import logging
from dataclasses import dataclass

import numpy
from spacy.tokens import Span
from spacy_transformers.data_classes import WordpieceBatch
from thinc.types import Ragged

from .alignment import align_span, build_alignment

Row = tuple[Span, list[int], numpy.ndarray]
logger = logging.getLogger("spacy_unmasked")


@dataclass
class EncodedBatch:
    """Spans (nested per doc), their padded pieces and the token alignment."""

    spans: list[list[Span]]
    wordpieces: WordpieceBatch
    align: Ragged


def encode_spans(
    tokenizer, nested_spans: list[list[Span]], *, max_length: int, add_bos: bool, repeat: int = 0
) -> EncodedBatch:
    """Tokenize spans without the tokenizer's own special tokens, prepend BOS
    if asked, split any span whose pieces (times ``repeat + 1``) exceed
    ``max_length`` so that every token is covered, repeat the pieces, right-pad
    and align the pieces of the last copy to tokens."""
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    copies = repeat + 1
    budget = (max_length - len(bos)) // copies
    if budget < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for {copies} copies of a span's pieces (repeat={repeat}): "
            f"raise max_length to at least {len(bos) + copies}, or lower repeat."
        )
    kept = [[span for span in doc_spans if len(span)] for doc_spans in nested_spans]
    fitted = iter(_fit(tokenizer, [span for doc_spans in kept for span in doc_spans], budget))
    spans_out: list[list[Span]] = []
    rows: list[Row] = []
    for doc_spans in kept:
        doc_rows = [row for _ in doc_spans for row in next(fitted)]
        spans_out.append([span for span, _, _ in doc_rows])
        rows.extend(doc_rows)
    width = max((len(ids) for _, ids, _ in rows), default=0) * copies + len(bos)
    input_ids = numpy.full((len(rows), width), tokenizer.pad_token_id, dtype="int64")
    attention_mask = numpy.zeros((len(rows), width), dtype="float32")
    strings, lengths, per_span, first_pieces = [], [], [], []
    for row, (span, ids, offsets) in enumerate(rows):
        length = len(bos) + len(ids) * copies
        input_ids[row, :length] = bos + ids * copies
        first_pieces.append(len(bos) + len(ids) * repeat)
        attention_mask[row, :length] = 1.0
        lengths.append(length)
        strings.append(tokenizer.convert_ids_to_tokens(input_ids[row, :length].tolist()))
        per_span.append(align_span(span, offsets))
    wordpieces = WordpieceBatch(
        strings=strings,
        input_ids=input_ids,
        attention_mask=attention_mask,
        lengths=lengths,
        token_type_ids=None,
    )
    align = build_alignment([span for span, _, _ in rows], per_span, width=width, first_pieces=first_pieces)
    return EncodedBatch(spans=spans_out, wordpieces=wordpieces, align=align)


def piece_offsets(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character offsets of the pieces ``ids`` of ``text``, for slow (Python)
    tokenizers, which give none: each piece's text, without surrounding
    whitespace and partial characters, is found in ``text`` after the previous
    piece (ignoring case); a piece of only whitespace covers the whitespace at
    the current position. A piece that cannot be found (a normalized form, a
    piece of a multi-byte character) gets an empty span there."""
    lowered = text.lower()
    offsets, cursor = [], 0
    for piece in tokenizer.convert_ids_to_tokens(ids):
        raw = tokenizer.convert_tokens_to_string([piece]).lower()
        surface = raw.replace("\ufffd", "").strip()
        if not surface:
            width = len(raw) if raw and lowered[cursor : cursor + len(raw)].isspace() else 0
            offsets.append((cursor, cursor + width))
            cursor += width
            continue
        found = lowered.find(surface, cursor)
        if found < 0 or lowered[cursor:found].strip():  # not found, or text would be skipped
            offsets.append((cursor, cursor))
            continue
        lead = len(raw) - len(raw.lstrip())  # a leading space the piece carries, counted as fast tokenizers do
        start = found - lead if lead and found - lead >= cursor and lowered[found - lead : found].isspace() else found
        cursor = found + len(surface)
        offsets.append((start, cursor))
    return offsets


def _fit(tokenizer, spans: list[Span], budget: int) -> list[list[Row]]:
    """Encode all spans in one tokenizer call; for each span, its rows: the span
    itself, or its halves (by tokens, recursively) when it has more than
    ``budget`` pieces. A single token longer than the budget keeps its first
    ``budget`` pieces, with a warning; a span with no pieces at all gets one
    filler piece so that no row is all padding."""
    if not spans:
        return []
    texts = [span.text for span in spans]
    if tokenizer.is_fast:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    else:
        encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
        encoded["offset_mapping"] = [
            piece_offsets(tokenizer, text, ids) for text, ids in zip(texts, encoded["input_ids"], strict=True)
        ]
    fitted = []
    for span, ids, offsets in zip(spans, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        if not ids:
            filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
            fitted.append([(span, [filler], numpy.zeros((1, 2), dtype="i"))])
        elif len(ids) <= budget:
            fitted.append([(span, ids, numpy.asarray(offsets, dtype="i").reshape(-1, 2))])
        elif len(span) > 1:
            middle = span.start + len(span) // 2
            halves = [span.doc[span.start : middle], span.doc[middle : span.end]]
            fitted.append([row for half in _fit(tokenizer, halves, budget) for row in half])
        else:
            logger.warning(
                "The token %r has %d pieces, more than the %d that fit one copy of a row (max_length, less BOS, "
                "divided by repeat + 1): its features come from its first %d pieces only. Raise max_length or "
                "lower repeat to keep all of them.",
                span.text[:40] + ("..." if len(span.text) > 40 else ""),
                len(ids),
                budget,
                budget,
            )
            fitted.append([(span, ids[:budget], numpy.asarray(offsets[:budget], dtype="i").reshape(-1, 2))])
    return fitted
