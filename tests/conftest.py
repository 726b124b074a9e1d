import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the shared test helpers (equivalence.py, …)


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Contract checks run in true fp32: no TF32 anywhere, and a known thread count."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one); run them alone with "
                                       "`python -m pytest -m gpu` (benchmarks/gpu.sh does)")
