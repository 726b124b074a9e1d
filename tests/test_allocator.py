"""Keeping freed memory: glibc is told once per process, the opt-out is honoured, and what was done
is said (in the trainer's log and bench's environment). Each case runs in its own process, since the
setting is process-wide."""
import os
import subprocess
import sys

import pytest

from spark_sparse import allocator

PROBE = ("from spark_sparse.allocator import keep_freed_memory as k; a = k(); b = k(); "
         "assert a == b, (a, b); print(a)")


def _probe(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, **env))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_glibc_keeps_freed_memory():
    assert _probe(SPARK_SPARSE_MALLOC="").startswith("freed memory kept for reuse")


def test_opt_out_leaves_malloc_alone():
    assert "left as the system set it" in _probe(SPARK_SPARSE_MALLOC="system")


def test_trainer_says_it(tmp_path):
    from tests.pretrain_utils import TINY
    run = subprocess.run([sys.executable, "-m", "spark_sparse.cli", "pretrain", *TINY, "--steps", "1",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    said = [line for line in run.stdout.splitlines() if line.startswith("  memory: ")]
    assert len(said) == 1 and ("freed memory kept" in said[0] or "left as" in said[0]), said
