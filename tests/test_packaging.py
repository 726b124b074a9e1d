"""The wheel holds every module of the source folders, under spark_sparse, and imports from itself alone."""
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# source folder → the package it installs as
FOLDERS = {"spark_sparse": "spark_sparse", "kernels": "spark_sparse/kernels", "train": "spark_sparse/train",
           "benchmarks": "spark_sparse/benchmarks"}


def source_modules():
    found = set()
    for folder, package in FOLDERS.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, os.path.join(REPO, folder))
            for name in filenames:
                if name.endswith(".py"):
                    found.add(os.path.normpath(os.path.join(package, rel, name)).replace(os.sep, "/"))
    return found


def test_the_wheel_holds_every_module_and_imports_without_the_source_tree(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs", "results", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("spark_sparse-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    modules = source_modules()
    assert len(modules) > 60 and "spark_sparse/kernels/depthwise.py" in modules
    assert modules - names == set()
    assert {n for n in names if n.endswith(".py")} == modules  # nothing else, no top-level kernels/ or train/
    assert not any(os.path.islink(os.path.join(REPO, "spark_sparse", f)) for f in os.listdir(os.path.join(REPO, "spark_sparse")))

    probe = ("import importlib.util, spark_sparse, spark_sparse.kernels.depthwise, spark_sparse.train.trainer, "
             "spark_sparse.benchmarks.runner; "
             "print(spark_sparse.kernels.depthwise.__file__); "
             "print([n for n in ('kernels', 'train', 'benchmarks') if importlib.util.find_spec(n)])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    location, top_level = out.stdout.strip().splitlines()[-2:]
    assert location == str(tmp_path / "site" / "spark_sparse" / "kernels" / "depthwise.py")
    assert top_level == "[]"
