"""Odd text, bad configs and damaged saves give vectors or clear errors, never silent garbage."""

import json

import numpy
import pytest
import spacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacy_unmasked import (
    BaseModelMismatchError,
    PipelineFormatError,
    QuantizationUnavailableError,
    UnmaskSpecError,
    UnsupportedModelError,
)

from .helpers import lora, make_nlp, train

ODD_TEXTS = [
    "",
    "   ",
    "\n\n\t",
    "Hi",
    "🙂🙂 👍🏽 東京 Привет мир مرحبا",
    "bell\x07 null\x00 esc\x1b[0m end",
    "Supercalifragilisticexpialidocious" * 12,
    " ".join(["Jane Smith visited Berlin ."] * 150),
]


@pytest.fixture(scope="module")
def trained(tiny_llama_dir):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=("ner", "spancat"), max_length=24)
    train(nlp, steps=3)
    return nlp


def check_doc(doc):
    data = doc._.trf_data
    tensor = data.model_output.get("last_hidden_state")
    if len(doc) == 0:
        return
    assert tensor is not None and numpy.isfinite(tensor).all()
    assert data.align.lengths.shape[0] == len(doc)
    assert (data.align.lengths > 0).all(), [t.text for t, n in zip(doc, data.align.lengths) if n == 0]
    for ent in doc.ents:
        assert 0 <= ent.start < ent.end <= len(doc)


@pytest.mark.parametrize("text", ODD_TEXTS, ids=range(len(ODD_TEXTS)))
def test_odd_text_alone(trained, text):
    check_doc(trained(text))


def test_odd_texts_mixed_in_one_batch(trained):
    docs = list(trained.pipe(ODD_TEXTS + ODD_TEXTS[::-1], batch_size=5))
    for doc in docs:
        check_doc(doc)
    long_doc = trained(ODD_TEXTS[-1])
    assert len(long_doc._.trf_data.wordpieces.lengths) > 10  # split into many spans of <= 24 pieces
    assert max(long_doc._.trf_data.wordpieces.lengths) <= 24


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(min_size=0, max_size=60), min_size=1, max_size=4))
def test_random_unicode_never_breaks_the_pipeline(trained, texts):
    for doc in trained.pipe(texts):
        check_doc(doc)


@pytest.mark.parametrize(
    "settings_,error,message",
    [
        ({"unmask": "0x11"}, UnmaskSpecError, "bit string"),
        ({"unmask": 1111}, UnmaskSpecError, "write bit strings in quotes"),
        ({"unmask": "00000"}, UnmaskSpecError, "at most 4 bits"),
        ({"unmask": [7]}, UnmaskSpecError, "out of range"),
        ({"lora": lora(targets=("query", "value"))}, ValueError, "do not exist in this model"),
        ({"attn_implementation": "flex_attention"}, UnsupportedModelError, "Supported backends"),
        (
            {"quantization": {"@misc": "spacy-unmasked.BitsAndBytes.v1", "bits": 4}},
            ValueError,
            "quantized base cannot be fine-tuned",
        ),
        ({"lora": lora(), "freeze_base": True}, ValueError, "trains nothing in the transformer"),
        ({"num_layers": 9}, ValueError, "exceeds the 4 decoder layers"),
        ({"torch_dtype": "bfloat16"}, ValueError, "Full fine-tuning needs float32"),
    ],
)
def test_bad_config_fails_before_training(tiny_llama_dir, settings_, error, message):
    with pytest.raises(error, match=message):
        nlp = make_nlp(tiny_llama_dir, components=("ner",), **settings_)
        nlp.initialize()


def test_not_a_decoder_is_refused(tmp_path):
    import transformers

    bert = transformers.BertModel(
        transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    bert.save_pretrained(tmp_path)
    nlp = make_nlp(tmp_path, components=())
    with pytest.raises(UnsupportedModelError, match=r"model type 'bert'"):
        nlp.initialize()


def test_tokenizer_without_pad_eos_or_unk_is_refused(tmp_path):
    from .helpers import save_tiny_pretrained

    folder = save_tiny_pretrained(tmp_path / "m", "llama")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("pad_token", "eos_token", "unk_token"):
        config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>"}))
    nlp = make_nlp(folder, components=())
    with pytest.raises(ValueError, match="no pad, EOS or UNK token"):
        nlp.initialize()


@pytest.fixture()
def saved(trained, tmp_path):
    trained.to_disk(tmp_path / "p")
    return tmp_path / "p", tmp_path / "p" / "transformer" / "model"


def test_missing_and_corrupted_adapter(saved):
    path, model_dir = saved
    adapter = model_dir / "adapter.safetensors"
    data = adapter.read_bytes()
    adapter.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineFormatError, match=r"incomplete or changed: adapter\.safetensors has"):
        spacy.load(path)
    adapter.unlink()
    with pytest.raises(PipelineFormatError, match=r"adapter .* is missing"):
        spacy.load(path)


def test_manifest_from_a_newer_version(saved):
    path, model_dir = saved
    manifest = json.loads((model_dir / "unmasked.json").read_text())
    manifest["format"] = 99
    (model_dir / "unmasked.json").write_text(json.dumps(manifest))
    with pytest.raises(PipelineFormatError, match="newer than this version"):
        spacy.load(path)


def test_mismatched_adapter_is_refused(saved):
    path, model_dir = saved
    r8 = {"components": {"transformer": {"model": {"lora": {"r": 8}}}}}
    with pytest.raises(PipelineFormatError, match=r"trained with lora = .*r=4"):
        spacy.load(path, config=r8)
    manifest = json.loads((model_dir / "unmasked.json").read_text())
    manifest["settings"]["lora"]["r"] = 8  # a manifest that lies about its adapter
    (model_dir / "unmasked.json").write_text(json.dumps(manifest))
    with pytest.raises(BaseModelMismatchError, match="does not fit this model"):
        spacy.load(path, config=r8)


def test_interrupted_save_never_loads(trained, tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous pipeline loadable and unchanged."""
    from spacy_unmasked import folder

    trained.to_disk(tmp_path / "p")
    before = (tmp_path / "p" / "transformer" / "model" / "adapter.safetensors").read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(folder, "_write_manifest", explode)
    with pytest.raises(KeyboardInterrupt):
        trained.to_disk(tmp_path / "p")
    monkeypatch.undo()
    after = (tmp_path / "p" / "transformer" / "model" / "adapter.safetensors").read_bytes()
    assert after == before
    spacy.load(tmp_path / "p")
    assert not [p for p in (tmp_path / "p" / "transformer").iterdir() if p.name != "model" and p.is_dir()]


def test_truncated_copy_is_detected(saved):
    path, model_dir = saved
    tokenizer_file = model_dir / "tokenizer" / "tokenizer.json"
    tokenizer_file.write_text(tokenizer_file.read_text()[:100])
    with pytest.raises(PipelineFormatError, match="incomplete or changed"):
        spacy.load(path)


def test_nan_loss_stops_with_a_clear_message(tiny_llama_dir):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=("ner",))
    with pytest.raises(FloatingPointError, match="learning rate"):
        train(nlp, steps=3, lr=1e30)


def test_using_a_pipeline_before_initialize_says_so(tiny_llama_dir):
    nlp = make_nlp(tiny_llama_dir, components=())
    with pytest.raises(ValueError, match=r"call nlp\.initialize\(\)"):
        nlp("Jane Smith visited Berlin.")


def test_unknown_model_type_is_reported_as_unsupported_not_missing(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3000", "num_hidden_layers": 2}))
    nlp = make_nlp(tmp_path, components=())
    with pytest.raises(UnsupportedModelError, match="Supported families"):
        nlp.initialize()


def test_equivalent_settings_load_and_dotted_lora_targets_work(tiny_llama_dir, tmp_path):
    nlp = make_nlp(tiny_llama_dir, unmask="all", lora=lora(targets=("self_attn.q_proj", "v_proj")), components=())
    nlp.initialize()
    nlp.to_disk(tmp_path / "p")
    same_meaning = {"unmask": "1111", "lora": {"dropout": 0.3}}
    reloaded = spacy.load(
        tmp_path / "p", config={"components": {"transformer": {"model": same_meaning, "merge_lora": False}}}
    )
    a = nlp("Jane Smith visited Berlin.")._.trf_data.model_output.last_hidden_state
    b = reloaded("Jane Smith visited Berlin.")._.trf_data.model_output.last_hidden_state
    numpy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_quantization_compute_dtype_typo_is_caught_in_the_config(tiny_llama_dir):
    with pytest.raises(ValueError, match="compute_dtype 'bf16' is not supported"):
        make_nlp(
            tiny_llama_dir,
            components=(),
            lora=lora(),
            quantization={"@misc": "spacy-unmasked.BitsAndBytes.v1", "compute_dtype": "bf16"},
        )


def test_quantization_without_bitsandbytes_says_how_to_install(monkeypatch):
    import importlib.util

    import torch

    from spacy_unmasked.quantization import bitsandbytes_config
    from spacy_unmasked.settings import QuantizationSettings

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real_find_spec(name)
    )
    for device in ("cpu", "cuda"):
        with pytest.raises(QuantizationUnavailableError, match=r"pip install 'spacy-unmasked\[quantization\]'"):
            bitsandbytes_config(QuantizationSettings(), torch.device(device), native_bfloat16=False)


@pytest.mark.parametrize("device,installed,minimum", [("cpu", "0.49.1", "0.50.2"), ("cuda", "0.44.0", "0.45.0")])
def test_too_old_bitsandbytes_names_the_version_to_install(monkeypatch, device, installed, minimum):
    import importlib.metadata

    import torch

    from spacy_unmasked.quantization import bitsandbytes_config
    from spacy_unmasked.settings import QuantizationSettings

    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: installed if name == "bitsandbytes" else real_version(name)
    )
    with pytest.raises(
        QuantizationUnavailableError,
        match=rf"bitsandbytes {installed} cannot quantize on {device}: "
        rf"install bitsandbytes >= {minimum}",
    ):
        bitsandbytes_config(QuantizationSettings(), torch.device(device), native_bfloat16=False)
    monkeypatch.undo()
    assert bitsandbytes_config(QuantizationSettings(bits=8), torch.device("cpu"), native_bfloat16=False).load_in_8bit


def test_auto_compute_dtype_is_bfloat16_only_where_native():
    """compute_dtype "auto": bfloat16 on devices that compute it natively, float32 elsewhere (emulated
    bfloat16 makes 4-bit layers many times slower); explicit values are kept."""
    import torch

    from spacy_unmasked.quantization import compute_dtype
    from spacy_unmasked.settings import QuantizationSettings

    auto = QuantizationSettings(compute_dtype="auto")
    assert compute_dtype(auto, native_bfloat16=True) == torch.bfloat16
    assert compute_dtype(auto, native_bfloat16=False) == torch.float32
    assert compute_dtype(QuantizationSettings(), native_bfloat16=False) == torch.bfloat16
    with pytest.raises(ValueError, match="use 'auto', 'bfloat16', 'float16'"):
        QuantizationSettings(compute_dtype="int4")
