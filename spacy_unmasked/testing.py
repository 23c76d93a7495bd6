"""Helpers for tests and benchmarks: small spaCy pipelines on an unmasked
transformer, built the way a config would build them, and a tiny training loop."""

import random

import spacy
from spacy.training import Example

TRAIN = [
    ("Apple Inc. hired Jane Smith in Cupertino last May.", [(0, 10, "ORG"), (17, 27, "PER"), (31, 40, "LOC")]),
    (
        "Barack Obama visited Berlin and Paris with Angela Merkel.",
        [(0, 12, "PER"), (21, 27, "LOC"), (32, 37, "LOC"), (43, 56, "PER")],
    ),
    ("New York Yankees beat Boston Red Sox on Sunday night.", [(0, 16, "ORG"), (22, 36, "ORG")]),
    ("Jane Smith moved to Berlin.", [(0, 10, "PER"), (20, 26, "LOC")]),
]

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
    out = []
    for text, ents in TRAIN:
        doc = nlp.make_doc(text)
        spans = {"sc": [(s, e, label) for s, e, label in ents]}
        out.append(Example.from_dict(doc, {"entities": ents, "spans": spans}))
    return out


def train(nlp, steps=10, seed=0, lr=1e-3, optimizer=None):
    """Train on TRAIN (initializing first unless an optimizer is given);
    returns the losses of every step."""
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
