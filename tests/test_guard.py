"""The runtime guard: it passes on unmasked models and fails, naming the layer and
the transformers versions, when the unmasking does not take effect."""

import importlib.metadata
import re

import pytest
import torch
import transformers

import spacy_unmasked.masking
from spacy_unmasked import unmask
from spacy_unmasked.guard import UnmaskingNotEffectiveError, supported_transformers, verify_unmasking

from .helpers import tiny_config, tiny_model

VERSION = re.escape(transformers.__version__)


def not_effective(detail: str) -> str:
    """The guard's message: the failing layer, the installed version and the supported range."""
    supported = re.escape(supported_transformers())
    return rf"not effective with transformers {VERSION}: .*{detail}.*supports transformers {supported}"


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("spec", ["none", "0101", "all"])
def test_guard_passes_on_unmasked_models(backend, spec):
    model = tiny_model("gemma2", backend)
    handle = unmask(model, spec)
    verify_unmasking(model, handle.layers)


def test_guard_passes_on_causal_lm_and_peft_and_restores_training_flags():
    import peft

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config("qwen2_moe", "sdpa"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))
    wrapped.train()
    wrapped.base_model.model.model.layers[0].mlp.eval()  # mixed flags come back as they were
    flags = {name: module.training for name, module in wrapped.named_modules()}
    handle = unmask(wrapped, "01")
    verify_unmasking(wrapped, handle.layers)
    assert {name: module.training for name, module in wrapped.named_modules()} == flags
    assert not flags["base_model.model.model.layers.0.mlp"] and flags["base_model.model.model.layers.0.self_attn"]


def test_guard_passes_on_bfloat16():
    model = tiny_model("llama", "sdpa").to(torch.bfloat16)
    handle = unmask(model, "01")
    verify_unmasking(model, handle.layers)


def test_hooks_gone_but_is_causal_off_fails():
    model = tiny_model("llama", "eager")
    handle = unmask(model, "01")
    for hook in handle._hooks:
        hook.remove()
    with pytest.raises(
        UnmaskingNotEffectiveError,
        match=not_effective(
            r"layers 2, 3 \(Llama\w*Attention\): unmasked, but position 0 does not see position 1 in a padded batch"
        ),
    ):
        verify_unmasking(model, handle.layers)


def test_a_layer_whose_mask_is_causal_again_fails():
    model = tiny_model("mistral", "sdpa")
    handle = unmask(model, "all")
    saved = {}
    attention = model.layers[3].self_attn
    # a later hook that puts the decoder's causal mask back, in layer 3 only
    attention.register_forward_pre_hook(
        lambda module, args, kwargs: saved.update(mask=kwargs["attention_mask"]), with_kwargs=True, prepend=True
    )
    attention.register_forward_pre_hook(
        lambda module, args, kwargs: (args, {**kwargs, "attention_mask": saved["mask"]}), with_kwargs=True
    )
    with pytest.raises(UnmaskingNotEffectiveError, match=r"layer 3 \(Mistral\w*Attention\): unmasked, but") as error:
        verify_unmasking(model, handle.layers)
    assert "layer 2" not in str(error.value) and "layers" not in str(error.value)


def test_mirrored_mask_missing_fails_in_padded_batches(monkeypatch):
    model = tiny_model("llama", "sdpa")
    handle = unmask(model, "all")
    monkeypatch.setattr(spacy_unmasked.masking, "bidirectional_mask", lambda mask: mask)
    with pytest.raises(UnmaskingNotEffectiveError, match=not_effective("does not see position 1 in a padded batch")):
        verify_unmasking(model, handle.layers)


def test_no_mask_left_causal_by_the_attention_class_fails():
    """Some attention classes run causal when the decoder builds no mask, whatever
    is_causal says (qwen2_moe's sdpa attention): the unpadded pass catches it."""
    model = tiny_model("qwen2_moe", "sdpa")
    if type(model.layers[0].self_attn).__name__ != "Qwen2MoeSdpaAttention":
        pytest.skip(f"transformers {transformers.__version__}'s qwen2_moe attention honours is_causal without a mask")
    handle = unmask(model, "01")
    verify_unmasking(model, handle.layers)
    handle._flash = True  # sabotage: leave the missing mask missing
    with pytest.raises(
        UnmaskingNotEffectiveError,
        match=r"layers 2, 3 \(Qwen2MoeSdpaAttention\): unmasked, but .* in an unpadded batch",
    ):
        verify_unmasking(model, handle.layers)


def test_padding_leak_fails(monkeypatch):
    model = tiny_model("llama", "eager")
    handle = unmask(model, "all")
    monkeypatch.setattr(spacy_unmasked.masking, "bidirectional_mask", lambda mask: torch.zeros_like(mask))
    with pytest.raises(
        UnmaskingNotEffectiveError, match=r"layers 0, 1, 2, 3 \(Llama\w*Attention\): real positions see padding"
    ):
        verify_unmasking(model, handle.layers)


def test_a_bidirectional_layer_that_should_be_causal_fails():
    model = tiny_model("llama", "sdpa")
    unmask(model, "all")
    with pytest.raises(
        UnmaskingNotEffectiveError,
        match=r"layer 0 \(Llama\w*Attention\): meant to be causal, but position 0 sees position 1",
    ):
        verify_unmasking(model, [1, 2, 3])


def test_out_of_range_layers_are_rejected():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"layers \[4\] are out of range for a decoder with 4 layers"):
        verify_unmasking(model, [4])


def test_supported_range_comes_from_the_package_metadata():
    try:
        importlib.metadata.version("spacy-unmasked")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("spacy-unmasked is not installed (run from a checkout)")
    declared = [r for r in importlib.metadata.requires("spacy-unmasked") or [] if r.startswith("transformers")]
    assert declared and supported_transformers() in declared[0]


def test_guard_passes_on_a_4bit_quantized_model(tmp_path):
    pytest.importorskip("bitsandbytes")
    from .helpers import save_tiny_pretrained

    save_tiny_pretrained(tmp_path, "qwen3")
    quantization = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = transformers.AutoModel.from_pretrained(
        tmp_path, quantization_config=quantization, device_map={"": "cpu"}, attn_implementation="sdpa"
    )
    assert type(model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    handle = unmask(model, "01")
    verify_unmasking(model, handle.layers)
    handle.remove()
    with pytest.raises(UnmaskingNotEffectiveError, match=r"layers 2, 3 \(Qwen3\w*Attention\): unmasked, but"):
        verify_unmasking(model, handle.layers)
