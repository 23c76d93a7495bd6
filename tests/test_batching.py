"""Length ordering at prediction: buckets of similar piece length, the same
outputs as one padded call, and the component switch that turns it off."""

import itertools
import random
from types import SimpleNamespace

import numpy
import pytest
import spacy
import torch

from spacy_unmasked.batching import call_overhead, length_buckets

from .helpers import lora, make_nlp, transformer_model

SHORT = ["Apple hired Tim.", "Paris is big.", "Go Bears!", "ok"]
LONG = [
    "Barack Obama met Angela Merkel in Berlin on Monday, and then flew to Paris to see the new president "
    "of France, who had just come back from a long trip to Canada and Mexico with his whole cabinet.",
    "The committee in Geneva said on Friday that the United Nations would send more help to the region "
    "before the winter, after talks with Google, Microsoft and Amazon about data centres in Ireland.",
]
TEXTS = [LONG[0], *SHORT[:2], LONG[1], *SHORT[2:], LONG[0][:60]]


def brute_force_cost(lengths, *, max_items, overhead):
    """The least cost over every cut of the longest-first order (an oracle for small inputs)."""
    ordered = sorted(lengths, reverse=True)
    best = None
    for cuts in itertools.product((False, True), repeat=len(ordered) - 1):
        groups, current = [], [ordered[0]]
        for length, cut in zip(ordered[1:], cuts):
            if cut:
                groups.append(current)
                current = []
            current.append(length)
        groups.append(current)
        if any(len(g) > 1 and len(g) * g[0] > max_items for g in groups):
            continue
        cost = sum(len(g) * g[0] + overhead for g in groups)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_buckets_cover_every_row_once_at_the_least_padding(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 9))]
    max_items, overhead = rng.choice([40, 100, 4096]), rng.choice([0, 8, 64])
    buckets = length_buckets(lengths, max_items=max_items, overhead=overhead)
    assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
    widths = [max(lengths[i] for i in bucket) for bucket in buckets]
    assert widths == sorted(widths, reverse=True)
    assert all(len(b) == 1 or len(b) * w <= max_items for b, w in zip(buckets, widths))
    cost = sum(len(b) * w + overhead for b, w in zip(buckets, widths))
    assert cost == brute_force_cost(lengths, max_items=max_items, overhead=overhead)


def test_buckets_cut_only_where_padding_saved_exceeds_the_call_overhead():
    assert length_buckets([10, 10, 10], max_items=4096, overhead=0) == [[0, 1, 2]]
    # cutting 50 from 5s saves 3 x 45 = 135 padded pieces: worth one call of 64, not one of 200
    assert length_buckets([5, 50, 5, 5], max_items=4096, overhead=64) == [[1], [0, 2, 3]]
    assert length_buckets([5, 50, 5, 5], max_items=4096, overhead=200) == [[1, 0, 2, 3]]
    assert sorted(map(len, length_buckets([30, 30, 30], max_items=60, overhead=0))) == [1, 2]
    assert length_buckets([100, 3], max_items=50, overhead=1000) == [[0], [1]]  # longer than the budget
    assert length_buckets([], max_items=10, overhead=1) == []
    assert call_overhead(torch.device("cpu")) < call_overhead(torch.device("cuda"))
    with pytest.raises(ValueError, match="max_items must be positive"):
        length_buckets([1], max_items=0, overhead=1)


def record_calls(nlp, monkeypatch):
    """Record the input shape of every decoder call of the pipeline's shim."""
    shim = nlp.get_pipe("transformer")._shim
    shapes, predict = [], shim.predict

    def counting(inputs):
        shapes.append(tuple(inputs.kwargs["input_ids"].shape))
        return predict(inputs)

    monkeypatch.setattr(shim, "predict", counting)
    return shim, shapes


def outputs(nlp, texts):
    docs = list(nlp.pipe(texts, batch_size=len(texts)))
    return docs, [doc._.trf_data for doc in docs]


@pytest.mark.parametrize(
    "settings",
    [
        {"unmask": "0011"},
        {"unmask": "none", "transformer_config": {"output_hidden_states": True, "output_attentions": True}},
        {"@architectures": "spacy-unmasked.UnmaskedTransformer.v2", "unmask": "0101", "repeat": 1},
    ],
    ids=["unmasked", "hidden-states-and-attentions", "repeat"],
)
def test_length_ordering_gives_the_outputs_of_one_padded_call(tiny_llama_dir, monkeypatch, settings):
    nlp = make_nlp(tiny_llama_dir, **settings)
    nlp.initialize()
    shim, shapes = record_calls(nlp, monkeypatch)
    shim.order_by_length = False
    plain_docs, plain = outputs(nlp, TEXTS)
    assert len(shapes) == 1
    shim.order_by_length = True
    shapes.clear()
    docs, ordered = outputs(nlp, TEXTS)
    assert len(shapes) > 1, "the mixed lengths should have been split into several decoder calls"
    assert sum(rows * width for rows, width in shapes) < sum(rows for rows, _ in shapes) * max(w for _, w in shapes)
    for got, expected in zip(ordered, plain):
        assert got.wordpieces.input_ids.tolist() == expected.wordpieces.input_ids.tolist()
        numpy.testing.assert_array_equal(got.align.dataXd, expected.align.dataXd)
        for field in ("last_hidden_state", "hidden_states", "attentions"):
            value, reference = getattr(got.model_output, field), getattr(expected.model_output, field)
            if reference is None:
                assert value is None
                continue
            many = isinstance(reference, (tuple, list))
            values, references = (value, reference) if many else ((value,), (reference,))
            assert len(values) == len(references)
            for a, b in zip(values, references):
                assert a.shape == b.shape
                a, b = numpy.asarray(a), numpy.asarray(b)
                for row, length in enumerate(expected.wordpieces.lengths):  # padding is never read
                    real = (
                        (row, slice(None), slice(length), slice(length))
                        if field == "attentions"
                        else (row, slice(length))
                    )
                    numpy.testing.assert_allclose(a[real], b[real], rtol=1e-4, atol=1e-5)
    assert [[(e.text, e.label_) for e in d.ents] for d in docs] == [
        [(e.text, e.label_) for e in d.ents] for d in plain_docs
    ]


def test_max_batch_items_bounds_every_decoder_call(tiny_llama_dir, monkeypatch):
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "unmasked_transformer",
        name="transformer",
        config={"model": transformer_model(tiny_llama_dir), "max_batch_items": 64},
    )
    nlp.initialize()
    shim, shapes = record_calls(nlp, monkeypatch)
    assert shim.max_batch_items == 64 and shim.order_by_length
    texts = SHORT * 6 + [LONG[0]]
    outputs(nlp, texts)
    assert sum(rows for rows, _ in shapes) == len(texts)
    assert all(rows == 1 or rows * width <= 64 for rows, width in shapes)


def test_order_by_length_false_reaches_the_shim(tiny_llama_dir, monkeypatch):
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "unmasked_transformer",
        name="transformer",
        config={"model": transformer_model(tiny_llama_dir), "order_by_length": False},
    )
    nlp.initialize()
    shim, shapes = record_calls(nlp, monkeypatch)
    assert shim.order_by_length is False
    outputs(nlp, TEXTS)
    assert len(shapes) == 1


def test_training_by_length_gives_the_gradients_of_one_padded_call(tiny_llama_dir, monkeypatch):
    """LoRA weights get the same gradients from length-ordered calls as from one padded call
    (no dropout; listeners send no gradient to padding, so neither does this test)."""
    nlp = make_nlp(tiny_llama_dir, lora=lora(dropout=0.0), unmask="0110")
    nlp.initialize()
    model = nlp.get_pipe("transformer").model
    shim = model.shim
    calls = []
    begin_update = shim.begin_update

    def counting(inputs):
        calls.append(tuple(inputs.kwargs["input_ids"].shape))
        return begin_update(inputs)

    monkeypatch.setattr(shim, "begin_update", counting)
    docs = [nlp.make_doc(text) for text in TEXTS]
    trainable = [(name, p) for name, p in shim.model.named_parameters() if p.requires_grad]
    assert trainable

    def gradients(order: bool) -> tuple[dict[str, torch.Tensor], int]:
        shim.order_by_length = order
        for _, parameter in trainable:
            parameter.grad = None
        calls.clear()
        batch, backprop = model.begin_update(docs)
        features = batch.model_output.last_hidden_state
        mask = torch.from_numpy(batch.wordpieces.attention_mask)[..., None]
        generator = torch.Generator().manual_seed(0)
        d_features = torch.randn(features.shape, generator=generator) * mask

        backprop(SimpleNamespace(model_output={"last_hidden_state": d_features}))
        return {name: parameter.grad.clone() for name, parameter in trainable}, len(calls)

    plain, plain_calls = gradients(False)
    ordered, ordered_calls = gradients(True)
    assert plain_calls == 1 and ordered_calls > 1
    assert any(float(g.abs().sum()) > 0 for g in plain.values())
    for name, gradient in plain.items():
        torch.testing.assert_close(ordered[name], gradient, rtol=1e-4, atol=1e-6, msg=name)
