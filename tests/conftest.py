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


RAY_MODULES = ("test_ray_apply.py", "test_ray_serve.py", "test_search.py", "test_sweep.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n 2 --dist loadgroup``), tests that start a local Ray run in one worker,
    one module after the other, so two Ray instances never share the machine's cores."""
    for item in items:
        if item.path.name in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))
