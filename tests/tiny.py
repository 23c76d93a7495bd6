"""Tiny random decoders of every supported family, built offline for tests."""

import transformers

FAMILIES = ("llama", "mistral", "mistral-sliding", "qwen2", "qwen3", "gemma2", "phi3")
BACKENDS = ("eager", "sdpa")

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(family: str, attn_implementation: str = "eager", **overrides):
    """A small random config of ``family`` (``mistral-sliding`` has a 4-token window)."""
    settings = dict(_COMMON)
    if family == "llama":
        config_cls = transformers.LlamaConfig
    elif family.startswith("mistral"):
        config_cls = transformers.MistralConfig
        settings["sliding_window"] = 4 if family == "mistral-sliding" else None
    elif family == "qwen2":
        config_cls = transformers.Qwen2Config
    elif family == "qwen3":
        config_cls = transformers.Qwen3Config
        settings["head_dim"] = 16
    elif family == "gemma2":
        config_cls = transformers.Gemma2Config
        settings.update(head_dim=16, query_pre_attn_scalar=16, sliding_window=4)
    elif family == "phi3":
        config_cls = transformers.Phi3Config
        settings["num_key_value_heads"] = 4
    else:
        raise ValueError(family)
    settings.update(overrides)
    config = config_cls(**settings)
    config._attn_implementation = attn_implementation
    return config


def tiny_model(family: str, attn_implementation: str = "eager", seed: int = 0, **overrides):
    """A random bare decoder (``XModel``) in eval mode."""
    import torch

    torch.manual_seed(seed)
    config = tiny_config(family, attn_implementation, **overrides)
    model = transformers.AutoModel.from_config(config, attn_implementation=attn_implementation)
    return model.eval()
