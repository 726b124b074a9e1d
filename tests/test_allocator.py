"""bench --keep-freed-memory: glibc is told once per process and what was done is said (bench's
environment). Run in its own process, since the setting is process-wide."""
import subprocess
import sys

import pytest

from spark_sparse import allocator

PROBE = ("from spark_sparse.allocator import keep_freed_memory as k, malloc_setting as m; "
         "before = m(); a = k(); b = k(); assert a == b == m(), (a, b); print(before + '|' + a)")


def test_said_once_per_process():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().split("|")
    assert before == "as the system set it"
    if allocator._glibc() is not None:
        assert after.startswith("freed memory kept for reuse")
    else:
        pytest.skip("not glibc: nothing to set")
