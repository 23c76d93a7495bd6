import pytest

from .helpers import save_tiny_pretrained


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run far faster on one thread than on a busy machine's several
    (every test module)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
