"""Every verified decoder family against the independent oracle of test_oracle.py,
the structural support check, and LoRA training through spaCy on an MoE and a
hybrid-window family."""

import pytest
import torch
import transformers

from spacy_unmasked import unmask
from spacy_unmasked.families import SUPPORTED_FAMILIES, UnsupportedModelError, check_family, find_decoder
from spacy_unmasked.guard import verify_unmasking

from .helpers import (
    ALL_FAMILIES,
    BACKENDS,
    FAMILY_SETTINGS,
    WINDOW,
    model_type,
    tiny_config,
    tiny_model,
)
from .test_oracle import (
    check_all_equals_padding_only_mask,
    check_eager_equals_sdpa,
    check_mixed_spec,
    layer_window,
)

# the model types issue 10 asks for; the suite verifies more
REQUIRED = (
    "llama mistral mixtral qwen2 qwen2_moe qwen3 qwen3_moe gemma gemma2 gemma3_text phi phi3 olmo olmo2 "
    "granite granitemoe cohere cohere2 starcoder2 stablelm glm glm4 helium smollm3"
).split()
HYBRID = ("qwen2-hybrid", "gemma2", "gemma3_text", "cohere2")  # sliding and full layers mixed
WINDOWED = tuple(f for f in ALL_FAMILIES if FAMILY_SETTINGS[f][1].get("sliding_window"))
LAYERS = 2  # enough for a causal layer below an unmasked one and for a sliding + full pair


def test_supported_families_are_the_verified_ones():
    assert set(SUPPORTED_FAMILIES) == {model_type(family) for family in ALL_FAMILIES}
    assert set(REQUIRED) <= set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_family_matches_the_oracle_on_eager_and_sdpa(family):
    models = {backend: tiny_model(family, backend, num_hidden_layers=LAYERS) for backend in BACKENDS}
    models["sdpa"].load_state_dict(models["eager"].state_dict())
    windows = [layer_window(models["eager"], index) for index in range(LAYERS)]
    if family in HYBRID:
        assert windows == ([None, WINDOW] if family == "qwen2-hybrid" else [WINDOW, None])
    elif family in WINDOWED:
        assert windows == [WINDOW] * LAYERS
    else:
        assert windows == [None] * LAYERS
    for backend, model in models.items():
        # "all" against the stock model with one padding-only mask: a window longer than the sequences
        wide = tiny_model(family, backend, num_hidden_layers=LAYERS, sliding_window=64)
        check_all_equals_padding_only_mask(wide)
        check_all_equals_padding_only_mask(wide, (6,))  # no padding: the decoder may build no mask
        check_mixed_spec(model, "01", "10")  # an unmasked layer above and below a causal one
        handle = unmask(model, "01")
        verify_unmasking(model, handle.layers)
        handle.remove()
    check_eager_equals_sdpa(models["eager"], models["sdpa"], "10")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_check_family_accepts_every_verified_config(family):
    check_family(tiny_config(family))


def test_check_family_is_cheap_for_a_large_config():
    import time

    available("qwen3_moe")
    config = transformers.AutoConfig.for_model(
        "qwen3_moe", hidden_size=2048, num_hidden_layers=48, num_experts=128, num_attention_heads=32
    )
    start = time.perf_counter()
    check_family(config)
    assert time.perf_counter() - start < 5  # a few meta-device blocks, not 48 layers of 128 experts
    assert config.num_hidden_layers == 48  # the caller's config is untouched


def available(model_type: str) -> None:
    if model_type not in transformers.models.auto.configuration_auto.CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no model type {model_type!r}")


SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@pytest.mark.parametrize(
    "model_type,settings,message",
    [
        ("bart", {"d_model": 32}, "encoder-decoder model"),
        ("t5", {"d_model": 32}, "encoder-decoder model"),
        ("bert", {}, r"no decoder stack holds its blocks in a `\.layers` list \(its block lists are named layer\)"),
        ("gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 2}, r"its block lists are named h\b"),
        ("mamba", {}, r"block 0 \(MambaBlock\) has no attention module with an `is_causal` flag"),
        ("falcon_h1", {"num_key_value_heads": 2}, r"mixes tokens outside attention too \(`mamba"),
    ],
)
def test_models_that_do_not_fit_are_refused_naming_what_they_lack(model_type, settings, message):
    available(model_type)
    config = transformers.AutoConfig.for_model(model_type, **{**SMALL, **settings})
    with pytest.raises(UnsupportedModelError, match=message):
        check_family(config)
    if not getattr(config, "is_encoder_decoder", False):
        with pytest.raises(UnsupportedModelError, match=message):
            find_decoder(transformers.AutoModel.from_config(config))


def test_blocks_without_a_mask_keyword_or_already_bidirectional_are_refused():
    model = tiny_model("llama")
    model.layers[1].self_attn.is_causal = False
    with pytest.raises(UnsupportedModelError, match=r"block 1 \(LlamaDecoderLayer\) is not causal"):
        unmask(model, "all")
    model = tiny_model("llama")
    attention = model.layers[0].self_attn
    attention.forward = lambda hidden_states, **kwargs: None  # a mask it could only take positionally
    with pytest.raises(
        UnsupportedModelError, match=r"attention `self_attn` \(LlamaAttention\) takes no `attention_mask`"
    ):
        unmask(model, "all")


@pytest.mark.parametrize("family", ["qwen2_moe", "gemma3_text"])
def test_lora_training_through_spacy(family, tiny_dirs):
    pytest.importorskip("spacy_transformers")
    from .helpers import examples, lora, make_nlp, train

    nlp = make_nlp(tiny_dirs(family), lora=lora(), unmask="01", components=("ner",))
    optimizer = nlp.initialize(lambda: examples(nlp))
    transformer = nlp.get_pipe("transformer").model.transformer
    assert find_decoder(transformer).config.model_type == family
    verify_unmasking(transformer, [2, 3])  # "01" of 4 layers
    before = {name: value.detach().clone() for name, value in transformer.named_parameters()}
    history = train(nlp, steps=8, optimizer=optimizer, lr=3e-3)
    assert history[-1]["ner"] < 0.8 * history[0]["ner"]
    for name, value in transformer.named_parameters():
        is_adapter = "lora_A" in name or "lora_B" in name
        assert (not torch.equal(before[name], value.detach())) == is_adapter, name
