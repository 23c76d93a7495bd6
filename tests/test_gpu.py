"""The oracle checks of tests/test_oracle.py on a CUDA GPU, run by a GPU machine
(``python -m pytest -m gpu``); skipped without one. benchmarks/gpu_check.py keeps
the GPU measurements (speed, memory, QLoRA steps on a 7B shape)."""

import pytest
import torch

from .helpers import tiny_model
from .test_oracle import check_all_equals_padding_only_mask, check_eager_equals_sdpa, check_mixed_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
FAMILIES = ("llama", "mistral-sliding", "qwen2", "gemma2")


def on_gpu(family: str, backend: str):
    return tiny_model(family, backend).to("cuda")


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_all_equals_the_stock_model_with_a_padding_only_mask_on_cuda(family, backend):
    check_all_equals_padding_only_mask(on_gpu(family, backend))


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_specs_equal_the_layer_by_layer_oracle_on_cuda(family, backend):
    check_mixed_spec(on_gpu(family, backend), "0011", "0101")


@pytest.mark.parametrize("family", FAMILIES)
def test_unmasked_eager_equals_unmasked_sdpa_on_cuda(family):
    check_eager_equals_sdpa(on_gpu(family, "eager"), on_gpu(family, "sdpa"), "01")
