"""unmask() against an independent oracle.

The oracle uses no project code: transformers passes a caller's 4-D float mask
([batch, 1, query, key], 0 visible, finfo.min hidden) straight to every layer,
so the stock model given a padding-only mask is the fully bidirectional model;
for mixed specs the test calls each decoder layer itself, with the inputs the
stock forward passes it (rotary embeddings, positions), a causal mask for
causal layers and a padding-only mask for unmasked ones. Sliding-window layers
get the same window on both sides.
"""

import pytest
import torch
from torch import nn

from spacy_unmasked import unmask

from .helpers import BACKENDS, tiny_model

ATOL = 2e-5
# rows: one full sequence, one right-padded
LENGTHS = (9, 5)


def batch(model: nn.Module, lengths=LENGTHS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (right-padded with pad id 0) and their 2-D attention mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, model.config.vocab_size, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = 0
    device = next(model.parameters()).device
    return ids.to(device), mask.to(device)


def oracle_mask(attention_mask: torch.Tensor, *, causal: bool, window: int | None, dtype) -> torch.Tensor:
    """A 4-D additive mask: real keys only, left of the query if ``causal``,
    within ``window`` positions (one side if causal, both sides if not)."""
    length, device = attention_mask.shape[-1], attention_mask.device
    query = torch.arange(length, device=device)[:, None]
    key = torch.arange(length, device=device)[None, :]
    allowed = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        allowed = allowed & (key <= query)
    if window is not None:
        allowed = allowed & ((query - key).abs() < window)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def attention_of(layer: nn.Module) -> nn.Module:
    for name in ("self_attn", "attention", "self_attention"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise AssertionError(f"no attention module in {type(layer).__name__}")


def layer_window(model: nn.Module, index: int) -> int | None:
    """The sliding window of one layer as the model's config and attention module state it."""
    attention = attention_of(model.layers[index])
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window
    if getattr(model.config, "use_sliding_window", True) is False:
        return None
    return getattr(model.config, "sliding_window", None)


def final_norm(model: nn.Module) -> nn.Module:
    for name in ("norm", "final_layernorm", "final_layer_norm"):
        if hasattr(model, name):
            return getattr(model, name)
    raise AssertionError(f"no final norm in {type(model).__name__}")


def run(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None):
    """Last hidden state and the output of every layer (hidden_states[1:]) of a forward pass."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    return out.last_hidden_state, out.hidden_states


def layer_inputs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) the stock forward passes to each decoder layer."""
    captured: list[tuple[tuple, dict]] = []

    def capture(module, args, kwargs):
        captured.append((args, dict(kwargs)))

    hooks = [layer.register_forward_pre_hook(capture, with_kwargs=True) for layer in model.layers]
    try:
        run(model, ids, mask)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(captured) == len(model.layers)
    return captured


def layer_by_layer(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, unmasked: set[int]):
    """The oracle for a mixed spec: per-layer outputs and the final normed state,
    calling each stock layer with a causal or a bidirectional (padding-only) mask."""
    inputs = layer_inputs(model, ids, mask)
    dtype = next(model.parameters()).dtype
    args, kwargs = inputs[0]
    hidden = args[0] if args else kwargs["hidden_states"]
    outputs = []
    with torch.no_grad():
        for index, (layer, (args, kwargs)) in enumerate(zip(model.layers, inputs)):
            assert "attention_mask" in kwargs, "the decoder passes the mask by keyword"
            kwargs = dict(kwargs)
            kwargs["attention_mask"] = oracle_mask(
                mask, causal=index not in unmasked, window=layer_window(model, index), dtype=dtype
            )
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs["hidden_states"] = hidden
            out = layer(*args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
            outputs.append(hidden)
        return final_norm(model)(hidden), outputs


def assert_real_close(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor, atol: float = ATOL) -> None:
    """Equal on the real (non-padding) positions."""
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=atol, rtol=1e-4)


def first_unmasked_equal_stock(stock_states, states, first: int) -> None:
    """Hidden states up to the input of the first unmasked layer are bit-identical."""
    for level in range(first + 1):
        assert torch.equal(states[level], stock_states[level]), f"hidden state {level} differs from the stock model"


def spec_layers(spec: str, num_layers: int) -> set[int]:
    """Layer indices of a bit string, computed here (groups nearest the input get the extra layer)."""
    groups = len(spec)
    base, extra = divmod(num_layers, groups)
    layers, start = set(), 0
    for group, bit in enumerate(spec):
        size = base + (1 if group < extra else 0)
        if bit == "1":
            layers.update(range(start, start + size))
        start += size
    return layers


def check_all_equals_padding_only_mask(model: nn.Module, lengths=LENGTHS) -> None:
    """unmask(m, "all") == stock model given an explicit padding-only 4-D mask."""
    ids, mask = batch(model, lengths)
    dtype = next(model.parameters()).dtype
    expected, _ = run(model, ids, oracle_mask(mask, causal=False, window=None, dtype=dtype))
    handle = unmask(model, "all")
    try:
        actual, _ = run(model, ids, mask)
    finally:
        handle.remove()
    assert_real_close(actual, expected, mask)


def check_mixed_spec(model: nn.Module, *specs: str, lengths=LENGTHS) -> None:
    """Mixed specs equal the layer-by-layer oracle; layers below the first unmasked
    one equal the stock model exactly."""
    ids, mask = batch(model, lengths)
    stock_final, stock_states = run(model, ids, mask)
    # the oracle with every layer causal is the stock model: the oracle's masks and windows are right
    causal_final, _ = layer_by_layer(model, ids, mask, set())
    assert_real_close(causal_final, stock_final, mask)
    for spec in specs:
        layers = spec_layers(spec, len(model.layers))
        oracle_final, oracle_outputs = layer_by_layer(model, ids, mask, layers)
        handle = unmask(model, spec)
        try:
            final, states = run(model, ids, mask)
        finally:
            handle.remove()
        if layers:
            first_unmasked_equal_stock(stock_states, states, min(layers))
            assert not torch.allclose(final[mask.bool()], stock_final[mask.bool()], atol=1e-4)
        for index, expected in enumerate(oracle_outputs[:-1]):
            assert_real_close(states[index + 1], expected, mask)
        assert_real_close(final, oracle_final, mask)


def check_eager_equals_sdpa(eager: nn.Module, sdpa: nn.Module, spec: str, lengths=LENGTHS) -> None:
    """The same weights unmasked the same way give the same states on eager and sdpa."""
    sdpa.load_state_dict(eager.state_dict())
    ids, mask = batch(eager, lengths)
    outputs = []
    for model in (eager, sdpa):
        handle = unmask(model, spec)
        try:
            outputs.append(run(model, ids, mask)[0])
        finally:
            handle.remove()
    assert_real_close(outputs[1], outputs[0], mask)


ORACLE_FAMILIES = ("llama", "mistral-sliding", "qwen2-hybrid", "gemma2")
CASES = [(family, backend) for family in ORACLE_FAMILIES for backend in BACKENDS]


@pytest.mark.parametrize("family,backend", CASES)
@pytest.mark.parametrize("lengths", [LENGTHS, (6,), (7, 2, 4)])
def test_all_equals_the_stock_model_with_a_padding_only_mask(family, backend, lengths):
    # a window longer than the sequences: the stock model takes one mask for all layers
    model = tiny_model(family, backend, **({"sliding_window": 64} if family != "llama" else {}))
    check_all_equals_padding_only_mask(model, lengths)


@pytest.mark.parametrize("family,backend", CASES)
def test_mixed_specs_equal_the_layer_by_layer_oracle(family, backend):
    check_mixed_spec(tiny_model(family, backend), "01", "0011", "1010", "0001", "1")


@pytest.mark.parametrize("family", ORACLE_FAMILIES)
@pytest.mark.parametrize("spec", ["1", "01"])
def test_unmasked_eager_equals_unmasked_sdpa(family, spec):
    check_eager_equals_sdpa(tiny_model(family, "eager"), tiny_model(family, "sdpa", seed=1), spec)


def test_the_oracle_can_fail(monkeypatch):
    """The oracle's checks reject a model that stayed causal."""
    import spacy_unmasked.masking

    model = tiny_model("llama", "sdpa")
    ids, mask = batch(model)
    dtype = next(model.parameters()).dtype
    expected, _ = run(model, ids, oracle_mask(mask, causal=False, window=None, dtype=dtype))
    with pytest.raises(AssertionError):
        assert_real_close(run(model, ids, mask)[0], expected, mask)
    # sabotage: is_causal off but the decoder's causal mask kept
    monkeypatch.setattr(spacy_unmasked.masking, "bidirectional_mask", lambda mask: mask)
    with pytest.raises(AssertionError):
        check_all_equals_padding_only_mask(model)
    with pytest.raises(AssertionError):
        check_mixed_spec(model, "01")
