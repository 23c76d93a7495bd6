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


TRAINING_TEXTS = [
    "Apple Inc. hired Jane Smith in Cupertino last May.",
    "Barack Obama visited Berlin and Paris with Angela Merkel.",
    "The Mistral model runs on a laptop; Llama needs more memory!",
    "Visit https://example.com or email info@example.com for help.",
    "Zürich, São Paulo and Kraków are cities. 東京 too. 🙂",
    "New York Yankees beat Boston Red Sox 5-3 on Sunday night.",
]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def tiny_tokenizer(kind: str = "byte-level"):
    """A small BPE tokenizer trained here: byte-level (GPT-2 style, offsets keep
    the leading space) or metaspace (SentencePiece style, ``▁``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "byte-level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        alphabet = []
    else:
        raise ValueError(kind)
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(TRAINING_TEXTS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
    )


def save_tiny_pretrained(path, family: str = "llama", *, tokenizer: str = "byte-level", seed: int = 0, **overrides):
    """Save a tiny random decoder and its tokenizer as a Hugging Face folder."""
    tok = tiny_tokenizer(tokenizer)
    settings = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    settings.update(overrides)
    model = tiny_model(family, "sdpa", seed=seed, **settings)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
