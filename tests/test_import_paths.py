"""The timm families' layers are registered whichever module a user imports first.

The package's public names load on first use, so ``spark_sparse/__init__`` no longer imports
``spark_sparse.models``; the modules that need the registry import it themselves. Each check runs
in a fresh interpreter, where nothing else has imported ``models`` yet.
"""
import subprocess
import sys

import pytest

from tests.pretrain_utils import REPO, env

SNIPPETS = {
    "convert": "from spark_sparse.convert import sparsify; sparsify(m)",
    "reference": "from spark_sparse.reference import MaskedDenseEncoder; MaskedDenseEncoder(m)",
    "package": "import spark_sparse; spark_sparse.sparsify(m)",
}


@pytest.mark.parametrize("path", sorted(SNIPPETS))
def test_timm_models_convert_from_any_first_import(path):
    code = "import timm\n" + "".join(f"m = timm.create_model({arch!r}); {SNIPPETS[path]}\n"
                                     for arch in ("resnet18", "convnext_atto")) + "print('converted')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "converted" in done.stdout, done.stderr[-2000:]
