"""The wheel holds every module of the source folders, under spark_sparse, imports from itself alone,
and its imports keep the layer contract (.importlinter).

The contract is checked on the unpacked wheel because only there do kernels/, train/ and
benchmarks/ sit inside the spark_sparse folder, where import-linter looks for a package's modules.
"""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# source folder → the package it installs as
FOLDERS = {"spark_sparse": "spark_sparse", "kernels": "spark_sparse/kernels", "train": "spark_sparse/train",
           "benchmarks": "spark_sparse/benchmarks"}


def source_modules():
    found = set()
    for folder, package in FOLDERS.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, folder)):
            # benchmarks/results/ holds records of runs (some of them scripts), not modules: the build skips it
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "results")]
            rel = os.path.relpath(dirpath, os.path.join(REPO, folder))
            for name in filenames:
                if name.endswith(".py"):
                    found.add(os.path.normpath(os.path.join(package, rel, name)).replace(os.sep, "/"))
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """(file names in the wheel, the folder it is unpacked in)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs", "results", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("spark_sparse-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    return names, tmp_path / "site"


def without_pythonpath(site):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return env


def test_the_wheel_holds_every_module_and_imports_without_the_source_tree(wheel, tmp_path):
    names, site = wheel
    modules = source_modules()
    assert len(modules) > 60 and "spark_sparse/kernels/depthwise.py" in modules
    assert modules - names == set()
    assert {n for n in names if n.endswith(".py")} == modules  # nothing else, no top-level kernels/ or train/
    package = os.path.join(REPO, "spark_sparse")
    assert not any(os.path.islink(os.path.join(package, f)) for f in os.listdir(package))

    probe = ("import importlib.util, spark_sparse, spark_sparse.kernels.depthwise, spark_sparse.train.trainer, "
             "spark_sparse.benchmarks.runner; "
             "print(spark_sparse.kernels.depthwise.__file__); "
             "print([n for n in ('kernels', 'train', 'benchmarks') if importlib.util.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=without_pythonpath(site),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    location, top_level = out.stdout.strip().splitlines()[-2:]
    assert location == str(site / "spark_sparse" / "kernels" / "depthwise.py")
    assert top_level == "[]"


def test_imports_run_one_way(wheel, tmp_path):
    """lint-imports with the repository's contract, on every module of the package."""
    _, site = wheel
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                          "lint_imports_command()", os.path.join(REPO, ".importlinter"),
                          "--no-cache"], cwd=tmp_path, env=without_pythonpath(site), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
