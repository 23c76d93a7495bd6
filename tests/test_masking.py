import pytest
import torch
import transformers

from spacy_unmasked import UnmaskSpecError, resolve_layers, unmask
from spacy_unmasked.families import UnsupportedModelError

from .helpers import BACKENDS, FAMILIES, tiny_model
from .test_oracle import assert_real_close, layer_by_layer, oracle_mask, run

CASES = [(family, backend) for family in FAMILIES for backend in BACKENDS]
WINDOWED = ("mistral-sliding", "gemma2")


def hidden(model, input_ids, attention_mask=None):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def ids(*rows):
    return torch.tensor(rows)


@pytest.mark.parametrize("family,backend", CASES)
def test_none_is_stock_and_remove_restores(family, backend):
    model = tiny_model(family, backend, **({"sliding_window": 64} if family in WINDOWED else {}))
    x = ids([5, 9, 17, 33, 8, 12])
    stock = hidden(model, x)
    # the oracle for "all": the stock model given an explicit padding-only (here all-visible) 4-D mask
    bidirectional = hidden(model, x, torch.zeros(1, 1, 6, 6))
    handle = unmask(model, "none")
    assert torch.equal(hidden(model, x), stock)
    handle.remove()
    handle = unmask(model, "all")
    torch.testing.assert_close(hidden(model, x), bidirectional, atol=2e-5, rtol=1e-4)
    handle.remove()
    assert torch.equal(hidden(model, x), stock)
    assert all(layer.self_attn.is_causal for layer in model.layers)


@pytest.mark.parametrize("family,backend", CASES)
@pytest.mark.parametrize("spec", ["all", "0001", [-1]])
def test_unmasked_layer_sees_right_context(family, backend, spec):
    model = tiny_model(family, backend)
    a = ids([5, 9, 17, 33, 8, 12])
    b = ids([5, 9, 17, 33, 8, 99])
    causal_a, causal_b = hidden(model, a), hidden(model, b)
    assert torch.equal(causal_a[0, 4], causal_b[0, 4])
    layers = {0, 1, 2, 3} if spec == "all" else {3}  # 4 layers
    full = torch.ones_like(a)
    expected_a, _ = layer_by_layer(model, a, full, layers)
    expected_b, _ = layer_by_layer(model, b, full, layers)
    handle = unmask(model, spec)
    torch.testing.assert_close(hidden(model, a), expected_a, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(hidden(model, b), expected_b, atol=2e-5, rtol=1e-4)
    handle.remove()


@pytest.mark.parametrize("family,backend", CASES)
@pytest.mark.parametrize("spec", ["none", "0101", "all"])
def test_padding_is_never_attended(family, backend, spec):
    model = tiny_model(family, backend)
    unmask(model, spec)
    long_row = [5, 9, 17, 33, 8, 12, 40]
    short_row = [7, 21, 3]
    batch = ids(long_row, short_row + [0] * 4)
    mask = ids([1] * 7, [1] * 3 + [0] * 4)
    padded = hidden(model, batch, mask)
    assert torch.isfinite(padded).all()  # padding queries far from any real key (sliding window) stay finite
    alone_long = hidden(model, ids(long_row))
    alone_short = hidden(model, ids(short_row))
    torch.testing.assert_close(padded[0], alone_long[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1, :3], alone_short[0], atol=1e-5, rtol=1e-5)
    other_pads = hidden(model, ids(long_row, [*short_row, 50, 60, 70, 80]), mask)
    torch.testing.assert_close(other_pads[1, :3], padded[1, :3], atol=1e-6, rtol=1e-6)
    # a batch of one with an explicit all-ones mask equals the same row without a mask
    single = hidden(model, ids(short_row), ids([1, 1, 1]))
    torch.testing.assert_close(single, alone_short, atol=1e-6, rtol=1e-6)


def test_spec_picks_the_right_layers_of_a_causal_lm():
    torch.manual_seed(0)
    from .helpers import tiny_config

    model = transformers.AutoModelForCausalLM.from_config(tiny_config("llama", num_hidden_layers=6))
    assert resolve_layers(model, "0011") == [4, 5]  # groups of 2, 2, 1, 1
    assert resolve_layers(model, "1000") == [0, 1]
    assert resolve_layers(7, "0011") == [4, 5, 6]
    handle = unmask(model, "01")
    assert [layer.self_attn.is_causal for layer in model.model.layers] == [True] * 3 + [False] * 3
    assert handle.layers == (3, 4, 5)
    with pytest.raises(ValueError, match="already unmasked"):
        unmask(model, "all")
    handle.remove()
    assert all(layer.self_attn.is_causal for layer in model.model.layers)


def test_mixed_spec_keeps_lower_layers_causal():
    """With only the last layer unmasked, the input to the last layer is the stock
    model's and the output is the layer-by-layer oracle's."""
    model = tiny_model("llama", "sdpa")
    a = ids([5, 9, 17, 33])
    _, stock_states = run(model, a, None)
    expected, _ = layer_by_layer(model, a, torch.ones_like(a), {3})
    unmask(model, [-1])
    final, states = run(model, a, None)
    for level in range(4):
        assert torch.equal(states[level], stock_states[level])
    torch.testing.assert_close(final, expected, atol=2e-5, rtol=1e-4)


def test_sliding_window_is_symmetric_in_unmasked_layers():
    model = tiny_model("mistral-sliding", "sdpa", num_hidden_layers=1)
    base = list(range(10, 22))
    near, far = list(base), list(base)
    near[5 + 3] = 99  # within the 4-token window of position 5
    far[5 + 4] = 99  # just outside it
    full = torch.ones(1, 12, dtype=torch.long)
    expected = {name: layer_by_layer(model, ids(row), full, {0})[0] for name, row in [("base", base), ("near", near)]}
    unmask(model, "all")
    h = hidden(model, ids(base))
    torch.testing.assert_close(h, expected["base"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(hidden(model, ids(near)), expected["near"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(hidden(model, ids(far))[0, 5], h[0, 5])


def test_gradient_checkpointing_and_peft_keep_unmasking():
    import peft

    model = tiny_model("llama", "sdpa")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, param in wrapped.named_parameters():  # LoRA B starts at zero: make the adapter count
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    batch = ids([5, 9, 17, 33], [7, 21, 0, 0])
    mask = ids([1, 1, 1, 1], [1, 1, 0, 0])
    with torch.no_grad():
        expected = wrapped(
            input_ids=batch, attention_mask=oracle_mask(mask, causal=False, window=None, dtype=torch.float32)
        )
    handle = unmask(wrapped, "all")
    out = wrapped(input_ids=batch, attention_mask=mask).last_hidden_state
    assert_real_close(out, expected.last_hidden_state, mask)
    out.sum().backward()
    grads = [p.grad for n, p in wrapped.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    handle.remove()


@pytest.mark.parametrize(
    "spec,message",
    [
        ("0021", "bit string"),
        ("", "bit string"),
        ("00000", "at most 4 bits"),
        ([4], "out of range"),
        ([0, -4], "twice"),
        (["1"], "not a layer index"),
        (3, "has type int"),
    ],
)
def test_bad_specs_are_rejected(spec, message):
    model = tiny_model("llama")
    with pytest.raises(UnmaskSpecError, match=message):
        unmask(model, spec)
    assert all(layer.self_attn.is_causal for layer in model.layers)


def test_unsupported_family_and_backend():
    bert = transformers.BertModel(
        transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(
        UnsupportedModelError, match=r"no decoder stack holds its blocks in a `\.layers` list.*verified: llama"
    ):
        unmask(bert, "all")
    model = tiny_model("llama", "sdpa")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(UnsupportedModelError, match="Supported backends: eager, sdpa"):
        unmask(model, "all")
