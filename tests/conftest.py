import pytest

from .tiny import save_tiny_pretrained


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama with a byte-level BPE tokenizer, saved to a folder."""
    return save_tiny_pretrained(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Saved tiny models keyed by family (built on first use)."""
    cache = {}

    def get(family: str, tokenizer: str = "byte-level"):
        key = (family, tokenizer)
        if key not in cache:
            cache[key] = save_tiny_pretrained(tmp_path_factory.mktemp(family), family, tokenizer=tokenizer)
        return cache[key]

    return get
