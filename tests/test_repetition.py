"""Sequence repetition (``repeat = r``): each span's pieces are fed r + 1 times
and tokens take the features of the last copy. Checked against a plain Hugging
Face forward pass over the repeated pieces, computed without project code."""

import numpy
import pytest
import spacy
import torch
from transformers import AutoModel, AutoTokenizer

from spacy_unmasked.errors import PipelineFormatError

from .helpers import TRAIN, examples, lora, make_nlp, train

V2 = "spacy-unmasked.UnmaskedTransformer.v2"
TEXTS = [text for text, _ in TRAIN]


def repeating_nlp(name, repeat, **settings):
    settings.setdefault("torch_dtype", "float32")
    return make_nlp(name, **{"@architectures": V2, "repeat": repeat, **settings})


def features(doc):
    return doc._.trf_data.model_output.last_hidden_state


@pytest.mark.parametrize("repeat", [1, 2])
def test_causal_features_equal_a_plain_forward_over_the_repeated_pieces(tiny_llama_dir, repeat):
    """unmask none: the last copy's features are those of a stock forward over BOS + pieces x (r+1),
    and every token is aligned to pieces of the last copy only."""
    nlp = repeating_nlp(tiny_llama_dir, repeat, unmask="none", components=())
    nlp.initialize()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model = AutoModel.from_pretrained(str(tiny_llama_dir), torch_dtype=torch.float32).eval()
    for text in TEXTS:
        doc = nlp(text)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(ids)
        with torch.no_grad():
            expected = model(torch.tensor([[tokenizer.bos_token_id] + ids * (repeat + 1)])).last_hidden_state[0]
        got = features(doc)[0]
        assert got.shape[0] == 1 + n * (repeat + 1)
        numpy.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
        aligned = doc._.trf_data.align.dataXd
        assert aligned.min() >= 1 + repeat * n and aligned.max() < 1 + (repeat + 1) * n
        # the copies differ: the last one has seen the whole span
        assert not numpy.allclose(got[1 : 1 + n], got[1 + repeat * n :], atol=1e-4)


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "phi3"])
def test_repeat_with_num_layers_on_other_families_equals_the_stock_truncated_model(family, tiny_dirs):
    """repeat 1 and num_layers 2 of 4, causal: the features are a stock forward of the first two blocks
    over the row, whose pieces are BOS (where the family has one) and then two equal copies."""
    base = tiny_dirs(family)
    nlp = repeating_nlp(base, 1, unmask="none", num_layers=2, components=())
    nlp.initialize()
    model = AutoModel.from_pretrained(str(base), torch_dtype=torch.float32).eval()
    model.layers = model.layers[:2]
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    for text in TEXTS:
        doc = nlp(text)
        data = doc._.trf_data
        ids = data.wordpieces.input_ids[0, : data.wordpieces.lengths[0]]
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert len(ids) - 2 * n in (0, 1) and (ids[-n:] == ids[-2 * n : -n]).all()
        with torch.no_grad():
            expected = model(torch.from_numpy(ids[None]), use_cache=False).last_hidden_state[0].numpy()
        numpy.testing.assert_allclose(features(doc)[0], expected, rtol=1e-4, atol=1e-5)
        assert data.align.dataXd.min() >= len(ids) - n


def test_repeat_with_qlora_trains_saves_and_reloads_bit_for_bit(tiny_dirs, tmp_path):
    """4-bit NF4 base, LoRA, repeat 1, unmask 01 on the first 3 blocks: trains, and the saved
    pipeline (quantized base kept) gives the same features and entities."""
    pytest.importorskip("bitsandbytes")
    nf4 = {"@misc": "spacy-unmasked.BitsAndBytes.v1", "bits": 4, "quant_type": "nf4", "double_quant": True}
    nlp = repeating_nlp(
        tiny_dirs("qwen2"), 1, unmask="01", num_layers=3, lora=lora(r=8), quantization=nf4, torch_dtype="bfloat16"
    )
    optimizer = nlp.initialize(lambda: examples(nlp))
    losses = train(nlp, steps=10, optimizer=optimizer, lr=3e-3)
    assert losses[-1]["ner"] < losses[0]["ner"]
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p", config={"components": {"transformer": {"dequantize": False}}})
    assert (loaded.meta["unmasked"]["repeat"], loaded.meta["unmasked"]["num_layers"]) == (1, 3)
    for text in TEXTS:
        a, b = nlp(text), loaded(text)
        numpy.testing.assert_array_equal(features(a), features(b))
        assert [(e.text, e.label_) for e in a.ents] == [(e.text, e.label_) for e in b.ents]


@pytest.mark.parametrize("unmask", ["none", "0011"])
def test_batched_equals_one_by_one(tiny_llama_dir, unmask):
    """Spans of different lengths padded in one batch give each doc the features it gets alone."""
    nlp = repeating_nlp(tiny_llama_dir, 2, unmask=unmask, components=())
    nlp.initialize()
    together = list(nlp.pipe(TEXTS, batch_size=len(TEXTS)))
    for text, doc in zip(TEXTS, together):
        alone = nlp(text)
        length = alone._.trf_data.wordpieces.lengths[0]
        numpy.testing.assert_allclose(features(doc)[0, :length], features(alone)[0, :length], rtol=1e-4, atol=1e-5)
        assert numpy.array_equal(doc._.trf_data.align.dataXd, alone._.trf_data.align.dataXd)


def test_long_docs_are_split_so_that_every_copy_fits(tiny_llama_dir):
    """max_length counts BOS and all copies: rows never exceed it, and every token keeps pieces."""
    nlp = repeating_nlp(tiny_llama_dir, 2, components=(), max_length=25)
    nlp.initialize()
    doc = nlp(" ".join(TEXTS))
    data = doc._.trf_data
    assert max(data.wordpieces.lengths) <= 25 and len(data.wordpieces.lengths) > 1
    assert (data.align.lengths > 0).all()


def test_trains_saves_and_reloads_to_the_same_outputs(tiny_llama_dir, tmp_path):
    """LoRA training with repeat and unmasking; the saved pipeline reloads to the same features
    and entities, and a config that changes repeat is refused."""
    nlp = repeating_nlp(tiny_llama_dir, 1, lora=lora(), unmask="0011")
    losses = train(nlp, steps=12, lr=3e-3)
    assert losses[-1]["ner"] < losses[0]["ner"]
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p", config={"components": {"transformer": {"merge_lora": False}}})
    assert loaded.meta["unmasked"]["repeat"] == 1
    for text in TEXTS:
        a, b = nlp(text), loaded(text)
        numpy.testing.assert_allclose(features(a), features(b), rtol=1e-5, atol=1e-6)
        assert [(e.text, e.label_) for e in a.ents] == [(e.text, e.label_) for e in b.ents]
    with pytest.raises(PipelineFormatError, match="repeat = 1 but the config now says 0"):
        spacy.load(tmp_path / "p", config={"components": {"transformer": {"model": {"repeat": 0}}}})


def test_repeat_zero_is_the_v1_model(tiny_llama_dir):
    """v2 with repeat 0 gives exactly the features of v1."""
    v1 = make_nlp(tiny_llama_dir, components=(), torch_dtype="float32")
    v2 = repeating_nlp(tiny_llama_dir, 0, components=())
    v1.initialize()
    v2.initialize()
    for text in TEXTS:
        assert numpy.array_equal(features(v1(text)), features(v2(text)))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"repeat": -1}, "repeat=-1 must be a whole number"),
        ({"repeat": 4, "max_length": 5}, "max_length=5 must be at least 6 pieces"),
    ],
)
def test_bad_repeat_settings_fail_at_build_time(tiny_llama_dir, settings, message):
    with pytest.raises(ValueError, match=message):
        make_nlp(tiny_llama_dir, components=(), **{"@architectures": V2, **settings})
