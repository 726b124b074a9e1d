import os

import pytest
import torch

# Without a GPU, Triton kernels are tested in Triton's interpreter. The switch is read when triton
# is first imported (importing timm does it), so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Contract checks run in true fp32: no TF32 anywhere, and a known thread count."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
