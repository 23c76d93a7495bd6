"""QLoRA on CPU: 4-bit NF4 (double quantization) and 8-bit bases, trained with
LoRA through spaCy, saved adapter-only and reloaded with identical predictions;
unmasking semantics hold on quantized models."""

import subprocess
import sys

import numpy
import pytest
import spacy
import torch
import transformers

from spacy_unmasked import unmask

from .helpers import examples, lora, make_nlp, train

pytest.importorskip("bitsandbytes")

FAMILIES = ("llama", "mistral", "qwen2")
NF4 = {"@misc": "spacy-unmasked.BitsAndBytes.v1", "bits": 4, "quant_type": "nf4", "double_quant": True}
INT8 = {"@misc": "spacy-unmasked.BitsAndBytes.v1", "bits": 8}
TEXTS = ["Jane Smith visited Berlin.", "Apple Inc. hired Barack Obama in Paris last May.", "Hi"]
KEEP_QUANTIZED = {"components": {"transformer": {"dequantize": False}}}


def outputs(nlp, texts=TEXTS):
    docs = list(nlp.pipe(texts))
    ents = [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs]
    scores = [d.spans["sc"].attrs["scores"] for d in docs]
    feats = [d._.trf_data.model_output.last_hidden_state for d in docs]
    return ents, scores, feats


def quantized_layers(model):
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__ and "bnb" in type(m).__module__}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quantization", [NF4, INT8], ids=["nf4", "int8"])
def test_qlora_trains_ner_and_spancat_saves_adapter_only_and_reloads(family, quantization, tiny_dirs, tmp_path):
    base = tiny_dirs(family)
    nlp = make_nlp(base, lora=lora(r=8), quantization=quantization, components=("ner", "spancat"))
    optimizer = nlp.initialize(lambda: examples(nlp))
    transformer = nlp.get_pipe("transformer").model.transformer
    expected_layer = "Linear4bit" if quantization["bits"] == 4 else "Linear8bitLt"
    assert expected_layer in quantized_layers(transformer)
    # state_dict holds 4-bit weights in bitsandbytes' canonical layout, whatever layout they run in
    before = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    history = train(nlp, steps=12, optimizer=optimizer)
    assert history[-1]["ner"] < 0.8 * history[0]["ner"]
    assert history[-1]["spancat"] < 0.8 * history[0]["spancat"]
    after = transformer.state_dict()
    assert after.keys() == before.keys()
    for name, value in after.items():
        is_adapter = "lora_A" in name or "lora_B" in name
        assert (not torch.equal(before[name], value.detach())) == is_adapter, name
        if is_adapter:
            assert value.dtype == torch.float32
    meta = nlp.meta["unmasked"]
    assert meta["quantization"]["bits"] == quantization["bits"]

    nlp.to_disk(tmp_path / "p")
    model_dir = tmp_path / "p" / "transformer" / "model"
    assert not (model_dir / "weights").exists()
    saved_bytes = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    base_bytes = (base / "model.safetensors").stat().st_size
    assert saved_bytes < base_bytes / 2, (saved_bytes, base_bytes)
    reloaded = spacy.load(tmp_path / "p", config=KEEP_QUANTIZED)
    assert expected_layer in quantized_layers(reloaded.get_pipe("transformer").model.transformer)
    assert reloaded.meta["unmasked"]["inference"] == f"quantized {quantization['bits']}-bit"
    ents_a, scores_a, feats_a = outputs(nlp)
    ents_b, scores_b, feats_b = outputs(reloaded)
    assert ents_a == ents_b
    for a, b in zip(scores_a + feats_a, scores_b + feats_b, strict=True):
        numpy.testing.assert_array_equal(a, b)  # same quantized weights, same adapter: bit for bit
    # by default a loaded quantized pipeline predicts dequantized, adapters folded in: the same
    # function up to bfloat16 rounding
    served = spacy.load(tmp_path / "p")
    served_model = served.get_pipe("transformer").model.transformer
    assert not quantized_layers(served_model)
    dtype = str(served_model.get_input_embeddings().weight.dtype).removeprefix("torch.")  # what activations run in
    assert served.meta["unmasked"]["inference"] == f"dequantized {dtype}, adapters merged"
    ents_c, scores_c, feats_c = outputs(served)
    assert len(ents_c) == len(ents_a)
    for a, c in zip(feats_a, feats_c, strict=True):
        assert numpy.abs(a - c).max() <= 0.05 * numpy.abs(a).max() + 0.05, numpy.abs(a - c).max()
    for a, c in zip(scores_a, scores_c, strict=True):
        numpy.testing.assert_allclose(a, c, atol=0.05)


def load_quantized(base, bits, attn="sdpa"):
    if bits == 4:
        config = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    else:
        config = transformers.BitsAndBytesConfig(load_in_8bit=True)
    model = transformers.AutoModel.from_pretrained(
        base, quantization_config=config, device_map={"": "cpu"}, attn_implementation=attn, torch_dtype=torch.bfloat16
    )
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bits", [4, 8])
def test_unmasking_semantics_hold_on_quantized_models(family, bits, tiny_dirs):
    """Padding invariance and "none" == stock on a quantized base. Tolerance: the
    padded batch and the single sequence run the same bf16 kernels on
    differently shaped inputs, so rows may differ by bf16 rounding (2^-8
    relative, a few units of the last place after 4 layers): atol 0.05 on
    activations of size ~1, where unmasking changes them by ~0.5."""
    model = load_quantized(tiny_dirs(family), bits)
    ids = torch.tensor([[1, 50, 51, 52, 53, 54, 55, 2], [1, 60, 61, 62, 0, 0, 0, 0]])
    mask = (torch.arange(8)[None, :] < torch.tensor([[8], [4]])).long()
    with torch.no_grad():
        stock = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        handle = unmask(model, "none")
        assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state.float(), stock)
        handle.remove()
        handle = unmask(model, "all")
        both_ways = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        alone = model(input_ids=ids[1:, :4]).last_hidden_state.float()
        handle.remove()
    torch.testing.assert_close(both_ways[1, :4], alone[0], atol=5e-2, rtol=0)
    # unmasking does change the first position (it now sees the right context)
    assert (both_ways[0, 0] - stock[0, 0]).abs().max() > 0.1


def test_paper_config_runs_end_to_end_with_spacy_train(tiny_dirs, tmp_path):
    """configs/paper_ner.cfg as shipped (NF4, double quant, LoRA r=64 alpha 16
    dropout 0.1 on q/v, lr 2e-4, batch 16) trains on CPU, then loads and predicts."""
    from .test_configs import CONFIGS, make_corpus, spacy_train

    corpus = make_corpus(tmp_path / "corpus")
    spacy_train(
        CONFIGS / "paper_ner.cfg",
        tmp_path / "out",
        f"--paths.train={corpus}",
        f"--paths.dev={corpus}",
        f"--paths.base_model={tiny_dirs('mistral')}",
        "--training.max_steps=4",
        "--training.eval_frequency=2",
        "--training.max_epochs=0",
    )
    nlp = spacy.load(tmp_path / "out" / "model-last")
    meta = nlp.meta["unmasked"]
    assert meta["quantization"] == {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    assert meta["lora"] == {"r": 64, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    assert not quantized_layers(nlp.get_pipe("transformer").model.transformer)  # served dequantized
    assert meta["inference"].startswith("dequantized") and meta["inference"].endswith("adapters merged")
    assert nlp("Jane Smith visited Berlin.")._.trf_data.model_output.last_hidden_state.shape[-1] == 64
    kept = spacy.load(tmp_path / "out" / "model-last", config=KEEP_QUANTIZED)
    assert "Linear4bit" in quantized_layers(kept.get_pipe("transformer").model.transformer)


@pytest.mark.slow
def test_qlora_package_loads_by_name(tiny_dirs, tmp_path):
    """An installable package built from a QLoRA pipeline holds the adapter only
    and loads by name in a fresh interpreter, quantized, with the same entities."""
    base = tiny_dirs("llama")
    nlp = make_nlp(base, lora=lora(r=8), quantization=NF4, components=("ner",))
    train(nlp, steps=15)
    nlp.meta["name"] = "qlora_tiny"
    nlp.to_disk(tmp_path / "p")
    expected = [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in nlp.pipe(TEXTS)]
    (tmp_path / "pkg").mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "spacy",
            "package",
            str(tmp_path / "p"),
            str(tmp_path / "pkg"),
            "--build",
            "wheel",
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "pkg").rglob("*.whl"))
    assert wheel.stat().st_size < (base / "model.safetensors").stat().st_size
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(tmp_path / "site"),
            str(wheel),
        ],
        check=True,
    )
    code = (
        "import json, spacy; nlp = spacy.load('en_qlora_tiny'); "
        "layers = {type(m).__name__ for m in nlp.get_pipe('transformer').model.transformer.modules()}; "
        f"print(json.dumps({{'4bit': 'Linear4bit' in layers, 'ents': [[[e.start_char, e.end_char, e.label_] "
        f"for e in d.ents] for d in nlp.pipe({TEXTS!r})]}}))"
    )
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert not out["4bit"]  # served dequantized, adapters folded in
    assert out["ents"] == [[list(e) for e in doc] for doc in expected]


def test_qlora_pipeline_embeds_its_base_unquantized_and_requantizes_it_identically(tiny_dirs, tmp_path):
    """embed_base on a 4-bit pipeline stores the checkpoint's own weights (not
    the 4-bit ones); loading quantizes them again to the same weights, so the
    pipeline predicts bit for bit as before with the original base gone."""
    import shutil

    from safetensors.torch import load_file

    from spacy_unmasked import embed_base

    base = shutil.copytree(tiny_dirs("qwen2"), tmp_path / "base")
    nlp = make_nlp(base, lora=lora(r=8), quantization=NF4, components=("ner", "spancat"))
    train(nlp, steps=8)
    embed_base(nlp).to_disk(tmp_path / "p")
    stored = load_file(str(next((tmp_path / "p" / "transformer" / "model" / "weights").glob("*.safetensors"))))
    original = load_file(str(base / "model.safetensors"))
    assert stored.keys() == original.keys() and all(torch.equal(stored[k], original[k]) for k in original)
    shutil.rmtree(base)
    reloaded = spacy.load(tmp_path / "p", config=KEEP_QUANTIZED)
    assert "Linear4bit" in quantized_layers(reloaded.get_pipe("transformer").model.transformer)
    ents_a, scores_a, feats_a = outputs(nlp)
    ents_b, scores_b, feats_b = outputs(reloaded)
    assert ents_a == ents_b
    for a, b in zip(scores_a + feats_a, scores_b + feats_b, strict=True):
        numpy.testing.assert_array_equal(a, b)
    reloaded.to_disk(tmp_path / "again")  # re-saving reads the embedded weights, not the deleted base
    assert load_file(
        str(next((tmp_path / "again" / "transformer" / "model" / "weights").glob("*.safetensors")))
    ).keys() == (original.keys())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_predictions_between_updates_leave_4bit_training_unchanged(family, tiny_dirs, tmp_path):
    """bitsandbytes 0.50 repacks 4-bit weights for inference on AVX512-BF16
    CPUs, a layout without backward (and a failing bias). A prediction before an
    update (as spaCy's initialize and evaluation do) must not change what the
    update computes, also for a loaded pipeline that predicted first."""

    def adapters_after_update(predict_first: bool, path=None):
        if path is None:
            nlp = make_nlp(tiny_dirs(family), lora=lora(r=8), quantization=NF4, components=("ner",))
            optimizer = nlp.initialize(lambda: examples(nlp))
        else:
            nlp = spacy.load(path, config=KEEP_QUANTIZED)
            optimizer = nlp.resume_training()
        if predict_first:
            list(nlp.pipe(TEXTS))
        model = nlp.get_pipe("transformer").model.transformer
        states = [m.weight.quant_state for m in model.modules() if type(m).__name__ == "Linear4bit"]
        assert states and not any(getattr(s, "packing_format_for_cpu", False) for s in states)
        spacy.util.fix_random_seed(0)
        nlp.update(examples(nlp), sgd=optimizer, drop=0.0)
        model = nlp.get_pipe("transformer").model.transformer
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    plain, after_predict = adapters_after_update(False), adapters_after_update(True)
    lowest_lora_a = next(n for n in plain if "layers.0." in n and "lora_A" in n)
    for name in plain:
        torch.testing.assert_close(after_predict[name], plain[name], rtol=0, atol=0, msg=name)
    assert lowest_lora_a  # the lowest layer's adapter gets its gradient through every 4-bit layer above

    nlp = make_nlp(tiny_dirs(family), lora=lora(r=8), quantization=NF4, components=("ner",))
    train(nlp, steps=2)
    nlp.to_disk(tmp_path / "p")
    loaded_plain = adapters_after_update(False, tmp_path / "p")
    loaded_after_predict = adapters_after_update(True, tmp_path / "p")
    for name in loaded_plain:
        torch.testing.assert_close(loaded_after_predict[name], loaded_plain[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("quantization", [NF4, INT8], ids=["nf4", "int8"])
def test_training_a_dequantized_pipeline_returns_to_the_quantized_base(quantization, tiny_dirs, tmp_path):
    """A loaded pipeline predicting dequantized puts its quantized layers and separate adapters back
    when it trains: the update equals that of a pipeline that never left the quantized form, the
    adapter file stays adapter-only, and a save in between changes nothing."""
    nlp = make_nlp(tiny_dirs("llama"), lora=lora(r=8), quantization=quantization, components=("ner",))
    train(nlp, steps=4)
    nlp.to_disk(tmp_path / "p")

    def adapters_after_update(config):
        loaded = spacy.load(tmp_path / "p", config=config)
        optimizer = loaded.resume_training()
        list(loaded.pipe(TEXTS))
        loaded.to_disk(tmp_path / "again")
        spacy.util.fix_random_seed(0)
        loaded.update(examples(loaded), sgd=optimizer, drop=0.0)
        model = loaded.get_pipe("transformer").model.transformer
        assert quantized_layers(model), "training runs on the quantized base"
        assert loaded.meta["unmasked"]["inference"] != "quantized"
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    served, kept = adapters_after_update({}), adapters_after_update(KEEP_QUANTIZED)
    assert served.keys() == kept.keys() and served
    for name in kept:
        torch.testing.assert_close(served[name], kept[name], rtol=0, atol=0, msg=name)
    saved = tmp_path / "again" / "transformer" / "model"
    assert (saved / "adapter.safetensors").exists() and not (saved / "weights").exists()
