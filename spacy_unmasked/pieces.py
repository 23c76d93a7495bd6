"""Docs → right-padded piece batches, with spans split to fit ``max_length``."""

from dataclasses import dataclass

import numpy
from spacy.tokens import Span
from spacy_transformers.data_classes import WordpieceBatch
from thinc.types import Ragged

from .alignment import align_span, build_alignment

Row = tuple[Span, list[int], numpy.ndarray]


@dataclass
class EncodedBatch:
    """Spans (nested per doc), their padded pieces and the token alignment."""

    spans: list[list[Span]]
    wordpieces: WordpieceBatch
    align: Ragged


def encode_spans(tokenizer, nested_spans: list[list[Span]], *, max_length: int, add_bos: bool) -> EncodedBatch:
    """Tokenize spans without the tokenizer's own special tokens, prepend BOS
    if asked, split any span whose pieces exceed ``max_length`` so that every
    token is covered, right-pad and align pieces to tokens."""
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    kept = [[span for span in doc_spans if len(span)] for doc_spans in nested_spans]
    fitted = iter(_fit(tokenizer, [span for doc_spans in kept for span in doc_spans], max_length - len(bos)))
    spans_out: list[list[Span]] = []
    rows: list[Row] = []
    for doc_spans in kept:
        doc_rows = [row for _ in doc_spans for row in next(fitted)]
        spans_out.append([span for span, _, _ in doc_rows])
        rows.extend(doc_rows)
    width = max((len(ids) for _, ids, _ in rows), default=0) + len(bos)
    input_ids = numpy.full((len(rows), width), tokenizer.pad_token_id, dtype="int64")
    attention_mask = numpy.zeros((len(rows), width), dtype="float32")
    strings, lengths, per_span = [], [], []
    for row, (span, ids, offsets) in enumerate(rows):
        length = len(bos) + len(ids)
        input_ids[row, :length] = bos + ids
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
    align = build_alignment([span for span, _, _ in rows], per_span, width=width, first_piece=len(bos))
    return EncodedBatch(spans=spans_out, wordpieces=wordpieces, align=align)


def _fit(tokenizer, spans: list[Span], budget: int) -> list[list[Row]]:
    """Encode all spans in one tokenizer call; for each span, its rows: the span
    itself, or its halves (by tokens, recursively) when it has more than
    ``budget`` pieces. A single token longer than the budget keeps its first
    ``budget`` pieces; a span with no pieces at all gets one filler piece so
    that no row is all padding."""
    if not spans:
        return []
    encoded = tokenizer(
        [span.text for span in spans],
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
    )
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
            fitted.append([(span, ids[:budget], numpy.asarray(offsets[:budget], dtype="i").reshape(-1, 2))])
    return fitted
