"""What a spacy-transformers user does, compared with what spacy-transformers'
own ``TransformerModel.v3`` does on the same tiny model: slow tokenizers,
requested hidden states and attentions, pieces of only whitespace, and saving
a pipeline before it is initialized."""

import json
import shutil

import numpy
import pytest
import spacy

from spacy_unmasked.pieces import piece_offsets

from .helpers import TRAIN, add_slow_tokenizer, make_nlp, save_tiny_pretrained

TEXTS = [text for text, _ in TRAIN] + ["Hello  world Inc.", "New   York ,  again"]


def stock_nlp(name, **settings):
    """A pipeline with spacy-transformers' own transformer model on ``name``."""
    nlp = spacy.blank("en")
    model = {
        "@architectures": "spacy-transformers.TransformerModel.v3",
        "name": str(name),
        "get_spans": {"@span_getters": "spacy-transformers.doc_spans.v1"},
        **settings,
    }
    nlp.add_pipe("transformer", config={"model": model})
    nlp.initialize()
    return nlp


def ours(name, **settings):
    nlp = make_nlp(name, components=(), **settings)
    nlp.initialize()
    return nlp


@pytest.fixture(scope="module")
def slow_dir(tmp_path_factory):
    return add_slow_tokenizer(save_tiny_pretrained(tmp_path_factory.mktemp("slow"), "llama"))


def pooled(doc):
    """Mean of each token's aligned piece vectors."""
    data = doc._.trf_data
    hidden = data.model_output.last_hidden_state.reshape(-1, data.model_output.last_hidden_state.shape[-1])
    vectors, start = [], 0
    for length in data.align.lengths:
        rows = data.align.dataXd[start : start + length]
        vectors.append(numpy.asarray(hidden[rows].mean(0)))
        start += length
    return numpy.stack(vectors)


def token_pieces(doc):
    """For each token, the strings of its pieces."""
    data = doc._.trf_data
    strings = [s for row in data.wordpieces.strings for s in row]
    width = data.wordpieces.input_ids.shape[1]
    out, start = [], 0
    for length in data.align.lengths:
        rows = data.align.dataXd[start : start + length]
        out.append([strings[(r // width) * len(data.wordpieces.strings[0]) + r % width] for r in rows])
        start += length
    return out


def test_slow_tokenizer_runs_like_the_fast_one(slow_dir):
    """use_fast = false loads the slow tokenizer; its pieces, alignment and features equal the fast
    tokenizer's, and spacy-transformers' own model gets the same pieces from it."""
    slow = ours(slow_dir, tokenizer_config={"use_fast": False})
    fast = ours(slow_dir)
    assert not slow.get_pipe("transformer").model.tokenizer.is_fast
    assert fast.get_pipe("transformer").model.tokenizer.is_fast
    stock = stock_nlp(slow_dir, tokenizer_config={"use_fast": False})
    for text in TEXTS:
        a, b = slow(text)._.trf_data, fast(text)._.trf_data
        assert numpy.array_equal(a.wordpieces.input_ids, b.wordpieces.input_ids), text
        assert numpy.array_equal(a.align.lengths, b.align.lengths) and numpy.array_equal(a.align.dataXd, b.align.dataXd)
        numpy.testing.assert_allclose(
            a.model_output.last_hidden_state, b.model_output.last_hidden_state, rtol=1e-5, atol=1e-6
        )
        stock_strings = stock(text)._.trf_data.wordpieces.strings[0]
        assert a.wordpieces.strings[0] == ["<s>", *stock_strings], text  # ours adds BOS, nothing else differs


def test_slow_offsets_equal_fast_offsets_on_words(slow_dir):
    """The offsets computed for a slow tokenizer cover the same word characters as the fast tokenizer's."""
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(str(slow_dir), use_fast=False)
    fast = AutoTokenizer.from_pretrained(str(slow_dir))
    for text in TEXTS:
        encoded = fast(text, add_special_tokens=False, return_offsets_mapping=True)
        got = piece_offsets(slow, text, encoded["input_ids"])
        for (s0, e0), (s1, e1) in zip(got, encoded["offset_mapping"]):
            assert text[s0:e0].strip() == text[s1:e1].strip(), (text, text[s0:e0], text[s1:e1])


def test_slow_tokenizer_that_cannot_load_names_the_cause(tmp_path, tiny_llama_dir):
    """A checkpoint whose slow tokenizer cannot load (no tokenizer.model): the error says so and
    how to fix it, instead of blaming a missing tokenizers package."""
    folder = tmp_path / "llama-tok"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "LlamaTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    nlp = make_nlp(folder, components=(), tokenizer_config={"use_fast": False})
    with pytest.raises(ValueError, match="use_fast = false asks for the slow") as error:
        nlp.initialize()
    assert "Remove use_fast" in str(error.value)
    assert "tokenizers" not in str(error.value).split("Remove")[0].split("loaded:")[0]


def test_requested_hidden_states_and_attentions_reach_model_output(tiny_llama_dir):
    """transformer_config output_hidden_states / output_attentions: the fields reach
    doc._.trf_data.model_output as in spacy-transformers, with the same number and shapes;
    not requested, they read as None (spacy-transformers raises AttributeError there)."""
    wanted = {"output_hidden_states": True, "output_attentions": True}
    nlp = ours(tiny_llama_dir, transformer_config=wanted, attn_implementation="eager", unmask="none")
    stock = stock_nlp(tiny_llama_dir, transformer_config={**wanted, "attn_implementation": "eager"})
    text = TEXTS[0]
    got, expected = nlp(text)._.trf_data.model_output, stock(text)._.trf_data.model_output
    assert got.hidden_states is not None and got.attentions is not None
    assert len(got.hidden_states) == len(expected.hidden_states) == 5  # embeddings + 4 layers
    assert len(got.attentions) == len(expected.attentions) == 4
    assert all(h.dtype == numpy.float32 or str(h.dtype) == "torch.float32" for h in got.hidden_states)
    # the last entry of hidden_states is the normed last hidden state of the model
    numpy.testing.assert_allclose(got.hidden_states[-1], got.last_hidden_state, rtol=1e-5, atol=1e-6)
    width = got.last_hidden_state.shape[1]
    assert tuple(got.attentions[0].shape[-2:]) == (width, width)
    plain = ours(tiny_llama_dir)(text)._.trf_data.model_output
    assert plain.hidden_states is None and plain.attentions is None
    assert list(plain.keys()) == ["last_hidden_state"]


def test_attentions_with_sdpa_are_refused_early(tiny_llama_dir):
    """sdpa computes no attention weights: asking for them fails at build time, naming the fix."""
    nlp = make_nlp(
        tiny_llama_dir, components=(), transformer_config={"output_attentions": True}, attn_implementation="sdpa"
    )
    with pytest.raises(ValueError, match="output_attentions needs attn_implementation = 'eager'"):
        nlp.initialize()


def test_piece_of_only_whitespace_aligns_to_the_preceding_token(tiny_llama_dir):
    """'Hello  world': the piece on the space that belongs to no token goes to 'Hello', as in
    spacy-transformers; 'ĠInc' still aligns to 'Inc' only."""
    nlp = ours(tiny_llama_dir)
    stock = stock_nlp(tiny_llama_dir)
    text = "Hello  world Inc."
    doc, stock_doc = nlp(text), stock(text)
    assert [t.text for t in doc] == ["Hello", " ", "world", "Inc."]
    pieces, stock_pieces = token_pieces(doc), token_pieces(stock_doc)
    assert pieces[0] == ["H", "el", "lo", "Ġ"] and stock_pieces[0][: len(pieces[0])] == pieces[0]
    assert "ĠIn" in pieces[3] and "ĠIn" not in pieces[2]  # no leak into the previous token
    every_piece = set(doc._.trf_data.align.dataXd.tolist())
    assert every_piece == set(range(1, doc._.trf_data.wordpieces.lengths[0]))  # all but BOS


@pytest.mark.parametrize("factory", ["unmasked_transformer", "transformer"])
def test_uninitialized_pipeline_saves_and_loads(tiny_llama_dir, tmp_path, factory):
    """Saving before nlp.initialize() works with both factories, and the loaded pipeline can be
    initialized and used like a new one."""
    nlp = make_nlp(tiny_llama_dir, factory=factory, components=("ner",))
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert not loaded.get_pipe("transformer").model.shim.is_loaded
    with pytest.raises(ValueError, match=r"call nlp\.initialize"):
        loaded("Jane Smith moved to Berlin.")
    loaded.initialize()
    doc = loaded("Jane Smith moved to Berlin.")
    assert doc._.trf_data.model_output.last_hidden_state.shape[-1] == 64
