import shutil

import numpy
import pytest
import spacy
import torch
import transformers

from spacy_unmasked import BaseModelMismatchError, BaseModelNotFoundError, resolve_layers, unmask

from .helpers import TRAIN, examples, lora, make_nlp, save_tiny_pretrained, train

TEXTS = [text for text, _ in TRAIN] + ["Jane Smith visited Berlin.", "Apple"]


def features(nlp, texts=TEXTS):
    return [doc._.trf_data.model_output.last_hidden_state for doc in nlp.pipe(texts)]


def predictions(nlp, texts=TEXTS):
    docs = list(nlp.pipe(texts))
    ents = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs]
    spans = [[(s.start, s.end, s.label_) for s in doc.spans.get("sc", [])] for doc in docs]
    scores = [doc.spans["sc"].attrs["scores"].tolist() if "sc" in doc.spans else [] for doc in docs]
    return ents, spans, scores


def load_exact(path, config=None):
    """spacy.load with LoRA kept unmerged, for bit-level round-trip comparisons
    (spacy-transformers' stock factory has no such switch: it always merges)."""
    config = dict(config or {})
    if spacy.util.load_config(path / "config.cfg")["components"]["transformer"]["factory"] == "unmasked_transformer":
        components = dict(config.get("components", {}))
        components["transformer"] = {**components.get("transformer", {}), "merge_lora": False}
        config["components"] = components
    return spacy.load(path, config=config)


def assert_same_outputs(nlp_a, nlp_b):
    for a, b in zip(features(nlp_a), features(nlp_b), strict=False):
        numpy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    ents_a, spans_a, scores_a = predictions(nlp_a)
    ents_b, spans_b, scores_b = predictions(nlp_b)
    assert ents_a == ents_b and spans_a == spans_b
    for x, y in zip(scores_a, scores_b, strict=False):
        numpy.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def resolved_auto_dtype():
    """What torch_dtype = 'auto' gives a LoRA-trained base on this machine."""
    from spacy_unmasked.hub import native_bfloat16

    return torch.bfloat16 if native_bfloat16(torch.device("cpu")) else torch.float32


def test_features_match_hugging_face_with_the_same_spec(tiny_llama_dir):
    nlp = make_nlp(tiny_llama_dir, unmask="0011", components=())
    nlp.initialize()
    doc = nlp("Jane Smith visited Berlin.")
    data = doc._.trf_data
    assert list(data.model_output.keys()) == ["last_hidden_state"]
    assert data.model_output.last_hidden_state.dtype == numpy.float32
    hf = transformers.AutoModel.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    unmask(hf, "0011")
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(data.wordpieces.input_ids)).last_hidden_state.numpy()
    numpy.testing.assert_allclose(data.model_output.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    assert resolve_layers(nlp.get_pipe("transformer").model.transformer, "0011") == [2, 3]


@pytest.mark.parametrize("factory", ["unmasked_transformer", "transformer"])
def test_lora_training_ner_and_spancat_then_round_trip(tiny_llama_dir, tmp_path, factory):
    # float32: the stock factory always merges LoRA when it loads, which is exact to 1e-6 only in float32
    dtype = "auto" if factory == "unmasked_transformer" else "float32"
    nlp = make_nlp(tiny_llama_dir, factory=factory, lora=lora(), torch_dtype=dtype, components=("ner", "spancat"))
    optimizer = nlp.initialize(lambda: examples(nlp))
    nlp.to_disk(tmp_path / "untrained")
    assert_same_outputs(nlp, load_exact(tmp_path / "untrained"))

    transformer = nlp.get_pipe("transformer").model.transformer
    before = {k: v.clone() for k, v in transformer.named_parameters()}
    history = train(nlp, steps=20, optimizer=optimizer)
    assert sum(h["ner"] for h in history[-3:]) / 3 < 0.9 * history[0]["ner"]
    assert history[-1]["spancat"] < history[0]["spancat"] / 3
    for name, value in transformer.named_parameters():
        is_adapter = "lora_B" in name or "lora_A" in name
        assert (not torch.equal(before[name], value)) == is_adapter, name
        # adapters train in float32 whatever the base's dtype ('auto': bfloat16 where the CPU has it)
        assert value.dtype == (torch.float32 if is_adapter or dtype == "float32" else resolved_auto_dtype()), name
    nlp.to_disk(tmp_path / "trained")
    reloaded = load_exact(tmp_path / "trained")
    assert_same_outputs(nlp, reloaded)
    # adapter and tokenizer only: far smaller than the base weights
    base_bytes = (tiny_llama_dir / "model.safetensors").stat().st_size
    saved = sum(p.stat().st_size for p in (tmp_path / "trained" / "transformer").rglob("*") if p.is_file())
    assert saved < base_bytes / 3


def test_full_fine_tuning_saves_safetensors_shards(tiny_llama_dir, tmp_path):
    nlp = make_nlp(tiny_llama_dir, components=("ner",))
    shim_params = None
    history = train(nlp, steps=6)
    assert history[-1]["ner"] < history[0]["ner"]
    shim_params = dict(nlp.get_pipe("transformer").model.transformer.named_parameters())
    stock = transformers.AutoModel.from_pretrained(tiny_llama_dir)
    changed = [n for n, p in stock.named_parameters() if not torch.equal(p, shim_params[n])]
    assert len(changed) > len(shim_params) // 2
    nlp.to_disk(tmp_path / "full")
    weights = list((tmp_path / "full" / "transformer" / "model" / "weights").glob("*.safetensors"))
    assert weights
    assert_same_outputs(nlp, spacy.load(tmp_path / "full"))


def test_frozen_base_gets_no_gradients(tiny_llama_dir, tmp_path):
    nlp = make_nlp(tiny_llama_dir, freeze_base=True, components=("ner",))
    nlp.initialize()
    transformer = nlp.get_pipe("transformer").model.transformer
    before = {k: v.clone() for k, v in transformer.named_parameters()}
    history = train(nlp, steps=5)
    assert history[-1]["ner"] < history[0]["ner"]
    assert all(torch.equal(before[k], v) and v.grad is None for k, v in transformer.named_parameters())
    nlp.to_disk(tmp_path / "frozen")
    assert not list((tmp_path / "frozen").rglob("*.safetensors"))
    assert_same_outputs(nlp, spacy.load(tmp_path / "frozen"))


def test_saved_pipeline_checks_its_base(tiny_llama_dir, tmp_path):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=("ner",))
    train(nlp, steps=2)
    nlp.to_disk(tmp_path / "p")

    def override(name):
        return {"components": {"transformer": {"model": {"name": str(name)}}}}

    moved = shutil.copytree(tiny_llama_dir, tmp_path / "moved-base")
    assert_same_outputs(nlp, load_exact(tmp_path / "p", config=override(moved)))
    other_weights = save_tiny_pretrained(tmp_path / "other", "llama", seed=1)
    with pytest.raises(BaseModelMismatchError, match="different weights"):
        spacy.load(tmp_path / "p", config=override(other_weights))
    other_arch = save_tiny_pretrained(tmp_path / "arch", "llama", num_hidden_layers=2)
    with pytest.raises(BaseModelMismatchError, match="different architecture"):
        spacy.load(tmp_path / "p", config=override(other_arch))
    with pytest.raises(BaseModelNotFoundError, match=r"spacy.load\(path, config="):
        spacy.load(tmp_path / "p", config=override(tmp_path / "nowhere"))


def test_bf16_base_keeps_lora_weights_float32(tiny_llama_dir):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), torch_dtype="bfloat16", components=("ner",))
    history = train(nlp, steps=3)
    model = nlp.get_pipe("transformer").model.transformer
    dtypes = {p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert dtypes == {torch.float32}
    assert model.get_base_model().layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert numpy.isfinite(history[-1]["ner"])
    doc = nlp("Jane Smith visited Berlin.")
    assert doc._.trf_data.model_output.last_hidden_state.dtype == numpy.float32


def test_num_layers_runs_only_the_first_blocks(tiny_llama_dir, tmp_path):
    nlp = make_nlp(tiny_llama_dir, num_layers=2, unmask="01", freeze_base=True, torch_dtype="float32", components=())
    nlp.initialize()
    doc = nlp("Jane Smith visited Berlin.")
    hf = transformers.AutoModel.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    hf.layers = hf.layers[:2]
    unmask(hf, [1])
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor(doc._.trf_data.wordpieces.input_ids)).last_hidden_state.numpy()
    numpy.testing.assert_allclose(doc._.trf_data.model_output.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    lora_nlp = make_nlp(tiny_llama_dir, num_layers=2, unmask="01", lora=lora(), components=("ner",))
    train(lora_nlp, steps=2)
    assert len(lora_nlp.get_pipe("transformer").model.transformer.get_base_model().layers) == 2
    lora_nlp.to_disk(tmp_path / "p")
    assert_same_outputs(lora_nlp, load_exact(tmp_path / "p"))


def test_embedded_base_loads_without_the_original(tiny_llama_dir, tmp_path):
    from spacy_unmasked import embed_base

    base = shutil.copytree(tiny_llama_dir, tmp_path / "base")
    nlp = make_nlp(base, lora=lora(), components=("ner",))
    train(nlp, steps=3)
    embed_base(nlp).to_disk(tmp_path / "embedded")
    shutil.rmtree(base)
    reloaded = load_exact(tmp_path / "embedded")
    assert_same_outputs(nlp, reloaded)
    weights = tmp_path / "embedded" / "transformer" / "model" / "weights"
    assert list(weights.glob("*.safetensors"))
    state = __import__("safetensors.torch").torch.load_file(str(next(weights.glob("*.safetensors"))))
    assert not any("lora_" in k or "base_layer" in k for k in state)


def test_doc_cleaner_frees_transformer_outputs_and_keeps_entities(tiny_llama_dir):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=("ner",))
    train(nlp, steps=2)
    kept = [[(e.start, e.end, e.label_) for e in d.ents] for d in nlp.pipe(TEXTS)]
    assert all("last_hidden_state" in d._.trf_data.model_output for d in nlp.pipe(TEXTS))
    nlp.add_pipe("doc_cleaner", last=True)
    docs = list(nlp.pipe(TEXTS))
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in docs] == kept
    assert all(d._.trf_data is None for d in docs)


def test_model_exposes_transformer_and_tokenizer_like_spacy_transformers(tiny_llama_dir):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=())
    model = nlp.get_pipe("transformer").model
    assert model.transformer is None and model.tokenizer is None
    nlp.initialize()
    stock = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert model.tokenizer("Jane Smith")["input_ids"] == stock("Jane Smith")["input_ids"]
    assert model.tokenizer.padding_side == "right"
    assert type(model.transformer.get_base_model()).__name__ == "LlamaModel"
    assert model.copy().transformer is not model.transformer


def test_replace_listeners_then_source_ner_into_another_pipeline(tiny_llama_dir, tmp_path):
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=("ner",))
    train(nlp, steps=15)
    expected = predictions(nlp)[0]
    assert any(expected)
    nlp.replace_listeners("transformer", "ner", ["model.tok2vec"])
    tok2vec_cfg = nlp.config["components"]["ner"]["model"]["tok2vec"]
    assert tok2vec_cfg["@architectures"] == "spacy-unmasked.Tok2VecTransformer.v1"
    assert tok2vec_cfg["transformer"]["unmask"] == "0011"
    nlp.remove_pipe("transformer")
    assert predictions(nlp)[0] == expected  # ner runs on its own copy of the transformer
    nlp.to_disk(tmp_path / "standalone")
    assert predictions(spacy.load(tmp_path / "standalone"))[0] == expected

    other = spacy.blank("en")
    other.add_pipe("sentencizer")
    other.add_pipe("ner", source=spacy.load(tmp_path / "standalone"))
    assert predictions(other)[0] == expected
    other.to_disk(tmp_path / "other")
    assert predictions(spacy.load(tmp_path / "other"))[0] == expected


def test_loaded_pipeline_states_what_it_is_in_meta_and_log(tiny_llama_dir, tmp_path, caplog):
    nlp = make_nlp(tiny_llama_dir, lora=lora(r=4), unmask="01", components=("ner",))
    train(nlp, steps=1)
    meta = nlp.meta["unmasked"]
    assert meta["base"] == {"name": str(tiny_llama_dir), "revision": None}
    assert (meta["unmask"], meta["layers"], meta["num_layers"]) == ("01", [2, 3], 4)
    assert meta["lora"]["r"] == 4 and meta["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert meta["quantization"] is None and meta["training"] == "lora"
    nlp.to_disk(tmp_path / "p")
    with caplog.at_level("INFO", logger="spacy_unmasked"):
        reloaded = spacy.load(tmp_path / "p")
    assert meta["inference"] == "as trained"  # a new pipeline keeps its adapters apart
    assert reloaded.meta["unmasked"] == {**meta, "inference": "adapters merged"}
    lines = [r.getMessage() for r in caplog.records if r.name == "spacy_unmasked"]
    assert len(lines) == 1 and "bidirectional layers 2-3 (unmask '01')" in lines[0], lines
    assert lines[0].endswith("predicting adapters merged"), lines
    assert "LoRA r=4" in lines[0] and str(tiny_llama_dir) in lines[0]


def test_auto_dtype_is_bfloat16_only_where_the_cpu_has_it(tiny_llama_dir, monkeypatch):
    from spacy_unmasked import hub

    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=())
    nlp.initialize()
    assert nlp.meta["unmasked"]["torch_dtype"] == str(resolved_auto_dtype()).removeprefix("torch.")
    monkeypatch.setattr(hub, "native_bfloat16", lambda device: False)
    nlp = make_nlp(tiny_llama_dir, lora=lora(), components=())
    nlp.initialize()
    assert nlp.meta["unmasked"]["torch_dtype"] == "float32"
    monkeypatch.setattr(hub, "native_bfloat16", lambda device: True)
    full = make_nlp(tiny_llama_dir, components=())  # a fully trained base stays float32
    full.initialize()
    assert full.meta["unmasked"]["torch_dtype"] == "float32"
    lora_nlp = make_nlp(tiny_llama_dir, lora=lora(), components=())
    lora_nlp.initialize()
    assert lora_nlp.meta["unmasked"]["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("torch_dtype,atol", [("float32", 1e-4), ("bfloat16", 0.1)])
def test_loaded_lora_pipeline_merges_adapters_for_inference(tiny_llama_dir, tmp_path, torch_dtype, atol):
    """Merged adapters give the unmerged outputs within the dtype's rounding
    (float32: 1e-4; bfloat16: ~2^-8 relative per weight through 4 layers), the
    saved adapter is untouched, and training unmerges them for good."""
    nlp = make_nlp(tiny_llama_dir, lora=lora(), torch_dtype=torch_dtype, components=("ner",))
    train(nlp, steps=10, lr=3e-3)
    nlp.to_disk(tmp_path / "p")
    adapter = (tmp_path / "p" / "transformer" / "model" / "adapter.safetensors").read_bytes()
    merged, unmerged = spacy.load(tmp_path / "p"), load_exact(tmp_path / "p")
    for a, b in zip(features(merged), features(unmerged), strict=True):
        numpy.testing.assert_allclose(a, b, atol=atol, rtol=0)
    base_layers = [
        m for n, m in merged.get_pipe("transformer").model.transformer.named_modules() if n.endswith("q_proj")
    ]
    assert all(layer.merged for layer in base_layers) and not any(
        m.merged for n, m in unmerged.get_pipe("transformer").model.transformer.named_modules() if n.endswith("q_proj")
    )
    merged.to_disk(tmp_path / "again")
    assert (tmp_path / "again" / "transformer" / "model" / "adapter.safetensors").read_bytes() == adapter
    train(merged, steps=1, optimizer=merged.resume_training())
    assert not any(layer.merged for layer in base_layers)
    merged("Jane Smith visited Berlin.")
    assert not any(layer.merged for layer in base_layers)  # no merge/unmerge cycles once it trains
