import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Without a GPU, Triton kernels are tested in Triton's interpreter. The switch is read when triton
# is first imported (importing timm does it), so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests never read or write the user's routing cache, and layers follow the fixed rule table unless
# a test asks for measured routing (tests/test_routing.py, tests/test_sampling.py): timings must not
# decide what a test runs.
os.environ["SPARK_SPARSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="spark_sparse_test_cache_")
atexit.register(shutil.rmtree, os.environ["SPARK_SPARSE_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("SPARK_SPARSE_ROUTING", "fixed")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Contract checks run in true fp32: no TF32 anywhere, and a known thread count."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty routing cache of this test's own, and no decision remembered in memory."""
    from spark_sparse import routing
    monkeypatch.setenv("SPARK_SPARSE_CACHE_DIR", str(tmp_path))
    routing.forget_measurements()
    yield tmp_path / "routing.json"
    routing.forget_measurements()
