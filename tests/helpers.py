"""Helpers for tests and benchmarks: tiny random decoders of every supported
family with a small BPE tokenizer (built offline), and small spaCy pipelines on
them, built the way a config builds them, with a tiny training loop. spaCy is
imported only by the pipeline helpers: the masking tests also run without it."""

import random

import pytest
import transformers

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
_MOE = dict(num_local_experts=4, num_experts_per_tok=2)
WINDOW = 4  # sliding window of the windowed families: shorter than the test sequences

# family -> (model type, settings on top of _COMMON). Each model type is one of
# spacy_unmasked.families.SUPPORTED_FAMILIES; variants add a window layout.
FAMILY_SETTINGS: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {"sliding_window": None}),
    "mistral-sliding": ("mistral", {"sliding_window": WINDOW}),
    "mixtral": ("mixtral", {**_MOE, "sliding_window": WINDOW}),
    "qwen2": ("qwen2", {}),
    "qwen2-hybrid": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen2_moe": (
        "qwen2_moe",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
        },
    ),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "qwen3_moe": (
        "qwen3_moe",
        {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    ),
    "gemma": ("gemma", {"head_dim": 16}),
    "gemma2": ("gemma2", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": WINDOW}),
    "gemma3_text": (
        "gemma3_text",
        {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": WINDOW, "sliding_window_pattern": 2},
    ),
    "phi": ("phi", {"num_key_value_heads": 4}),
    "phi3": ("phi3", {"num_key_value_heads": 4}),
    "phimoe": ("phimoe", _MOE),
    "olmo": ("olmo", {}),
    "olmo2": ("olmo2", {}),
    "olmoe": ("olmoe", {"num_experts": 4, "num_experts_per_tok": 2}),
    "granite": ("granite", {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.25}),
    "granitemoe": ("granitemoe", _MOE),
    "granitemoeshared": ("granitemoeshared", {**_MOE, "shared_intermediate_size": 64}),
    "cohere": ("cohere", {}),
    "cohere2": ("cohere2", {"sliding_window": WINDOW, "sliding_window_pattern": 2}),
    "starcoder2": ("starcoder2", {"sliding_window": WINDOW}),
    "stablelm": ("stablelm", {}),
    "glm": ("glm", {"head_dim": 16}),
    "glm4": ("glm4", {"head_dim": 16}),
    "helium": ("helium", {"head_dim": 16}),
    "smollm3": ("smollm3", {}),
    "arcee": ("arcee", {}),
    "bitnet": ("bitnet", {}),
    "deepseek_v3": (
        "deepseek_v3",
        {
            "num_key_value_heads": 4,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "moe_intermediate_size": 32,
            "kv_lora_rank": 16,
            "q_lora_rank": 32,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 16,
        },
    ),
    "nemotron": ("nemotron", {}),
    "persimmon": ("persimmon", {}),
    "gpt_neox": ("gpt_neox", {}),
}
# the families of the fast masking tests (tests/test_masking.py); tests/test_families.py runs all
FAMILIES = ("llama", "mistral", "mistral-sliding", "qwen2", "qwen3", "gemma2", "phi3")
ALL_FAMILIES = tuple(FAMILY_SETTINGS)


def model_type(family: str) -> str:
    """The transformers model type of a test family."""
    return FAMILY_SETTINGS[family][0]


def tiny_config(family: str, attn_implementation: str = "eager", **overrides):
    """A small random config of ``family`` (see FAMILY_SETTINGS)."""
    if family not in FAMILY_SETTINGS:
        raise ValueError(f"unknown test family {family!r}")
    kind, extra = FAMILY_SETTINGS[family]
    if kind not in transformers.models.auto.configuration_auto.CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no model type {kind!r}")
    settings = {**_COMMON, **extra, **overrides}
    config = transformers.AutoConfig.for_model(kind, **settings)
    if family == "qwen2-hybrid" and getattr(config, "layer_types", None) is None:
        pytest.skip(f"transformers {transformers.__version__} has no per-layer sliding windows for qwen2")
    config._attn_implementation = attn_implementation
    return config


def tiny_model(family: str, attn_implementation: str = "eager", seed: int = 0, **overrides):
    """A random bare decoder (``XModel``) in eval mode."""
    import torch

    torch.manual_seed(seed)
    config = tiny_config(family, attn_implementation, **overrides)
    try:
        model = transformers.AutoModel.from_config(config, attn_implementation=attn_implementation)
    except ValueError as error:
        if "does not support an attention implementation" not in str(error):
            raise
        pytest.skip(f"transformers {transformers.__version__} has no {attn_implementation} attention for {family}")
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


def add_slow_tokenizer(path):
    """Add a slow (Python) GPT-2 tokenizer with the same vocabulary and merges to
    a folder saved by :func:`save_tiny_pretrained` (byte-level): ``use_fast =
    false`` then loads it."""
    from transformers import AutoTokenizer, GPT2Tokenizer

    fast = AutoTokenizer.from_pretrained(str(path))
    vocab, merges = fast.backend_tokenizer.model.save(str(path))
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    GPT2Tokenizer(vocab_file=vocab, merges_file=merges, **special).save_pretrained(str(path))
    return path


# spaCy pipelines ---------------------------------------------------------------

TRAIN = [
    ("Apple Inc. hired Jane Smith in Cupertino last May.", [(0, 10, "ORG"), (17, 27, "PER"), (31, 40, "LOC")]),
    (
        "Barack Obama visited Berlin and Paris with Angela Merkel.",
        [(0, 12, "PER"), (21, 27, "LOC"), (32, 37, "LOC"), (43, 56, "PER")],
    ),
    ("New York Yankees beat Boston Red Sox on Sunday night.", [(0, 16, "ORG"), (22, 36, "ORG")]),
    ("Jane Smith moved to Berlin.", [(0, 10, "PER"), (20, 26, "LOC")]),
]

# Short texts for the Ray tests (apply and serve), some without entities.
SAMPLE_TEXTS = [
    "Jane Smith visited Berlin.",
    "Apple Inc. hired Barack Obama in Paris.",
    "Angela Merkel moved to Boston on Sunday.",
    "New York Yankees beat Boston Red Sox.",
    "Barack Obama and Jane Smith met in Cupertino last May.",
]


def write_ner_corpus(path, splits=("train", "dev", "test"), copies: int = 2):
    """``path/<split>.spacy`` for each split: TRAIN's docs with their entities, ``copies`` times."""
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    db = DocBin()
    for text, ents in TRAIN * copies:
        doc = nlp(text)
        doc.ents = [doc.char_span(start, end, label=label) for start, end, label in ents]
        db.add(doc)
    for split in splits:
        db.to_disk(path / f"{split}.spacy")
    return path


LISTENER = {
    "@architectures": "spacy-transformers.TransformerListener.v1",
    "grad_factor": 1.0,
    "pooling": {"@layers": "reduce_mean.v1"},
    "upstream": "*",
}


def transformer_model(name, **settings):
    """The config block of a spacy-unmasked.UnmaskedTransformer.v1 model."""
    block = {
        "@architectures": "spacy-unmasked.UnmaskedTransformer.v1",
        "name": str(name),
        "attn_implementation": "eager",
        "unmask": "0011",
    }
    block.update(settings)
    return block


def lora(r=4, targets=("q_proj", "v_proj"), dropout=0.0):
    """The config block of a spacy-unmasked.LoRA.v1 adapter."""
    return {"@misc": "spacy-unmasked.LoRA.v1", "r": r, "alpha": 8, "dropout": dropout, "target_modules": list(targets)}


def make_nlp(name, *, factory="unmasked_transformer", components=("ner",), **settings):
    """A blank English pipeline: transformer + listeners (ner and/or spancat)."""
    import spacy

    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe(factory, name="transformer", config={"model": transformer_model(name, **settings)})
    if "ner" in components:
        nlp.add_pipe(
            "ner",
            config={
                "model": {
                    "@architectures": "spacy.TransitionBasedParser.v2",
                    "state_type": "ner",
                    "extra_state_tokens": False,
                    "hidden_width": 32,
                    "maxout_pieces": 2,
                    "use_upper": False,
                    "nO": None,
                    "tok2vec": LISTENER,
                }
            },
        )
    if "spancat" in components:
        nlp.add_pipe(
            "spancat",
            config={
                "spans_key": "sc",
                "model": {
                    "@architectures": "spacy.SpanCategorizer.v1",
                    "reducer": {"@layers": "spacy.mean_max_reducer.v1", "hidden_size": 32},
                    "scorer": {"@layers": "spacy.LinearLogistic.v1", "nO": None, "nI": None},
                    "tok2vec": LISTENER,
                },
                "suggester": {"@misc": "spacy.ngram_suggester.v1", "sizes": [1, 2, 3]},
            },
        )
    return nlp


def examples(nlp):
    """TRAIN as spaCy Examples with entities and spans (key "sc")."""
    from spacy.training import Example

    out = []
    for text, ents in TRAIN:
        doc = nlp.make_doc(text)
        spans = {"sc": [(s, e, label) for s, e, label in ents]}
        out.append(Example.from_dict(doc, {"entities": ents, "spans": spans}))
    return out


def train(nlp, steps=10, seed=0, lr=1e-3, optimizer=None):
    """Train on TRAIN (initializing first unless an optimizer is given);
    returns the losses of every step."""
    import spacy

    spacy.util.fix_random_seed(seed)
    data = examples(nlp)
    if optimizer is None:
        optimizer = nlp.initialize(lambda: data)
    optimizer.learn_rate = lr
    history = []
    for _ in range(steps):
        random.shuffle(data)
        losses = {}
        nlp.update(data, sgd=optimizer, losses=losses)
        history.append(losses)
    return history
