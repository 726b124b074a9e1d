"""Keeping freed memory (pretrain on the CPU, bench --keep-freed-memory): glibc is told once per
process, pretrain's opt-out is honoured, and what was done is said (the trainer's log, bench's
environment). Each case runs in its own process, since the setting is process-wide."""
import subprocess
import sys

import pytest

from spark_sparse import allocator
from tests.pretrain_utils import REPO, TINY, env

PROBE = ("from spark_sparse.allocator import keep_freed_memory as k, malloc_setting as m; "
         "before = m(); a = k(); b = k(); assert a == b == m(), (a, b); print(before + '|' + a)")


def test_said_once_per_process():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().split("|")
    assert before == "as the system set it"
    if allocator._glibc() is not None:
        assert after.startswith("freed memory kept for reuse")
    else:
        pytest.skip("not glibc: nothing to set")


@pytest.mark.parametrize("flag, said", [(None, "freed memory kept"),
                                        ("--no-keep-freed-memory", "as the system set it")])
def test_pretrain_keeps_freed_memory_unless_told_not_to(tmp_path, flag, said):
    if flag is None and allocator._glibc() is None:
        said = "left as it is"
    run = subprocess.run([sys.executable, "-m", "spark_sparse.cli", "pretrain", *TINY, "--steps", "1",
                          "--out", str(tmp_path / "run"), *([flag] if flag else [])],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("  malloc: ")]
    assert len(lines) == 1 and said in lines[0], lines
