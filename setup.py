"""spark-sparse: SparK masked image modeling on a true sparse-convolution encoder."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SUBPACKAGES = {"spark_sparse.kernels": "kernels", "spark_sparse.train": "train",
               "spark_sparse.benchmarks": "benchmarks"}


def version():
    """spark_sparse/version.py's __version__, read without importing the package (and torch)."""
    scope = {}
    with open(os.path.join(HERE, "spark_sparse", "version.py"), encoding="utf-8") as f:
        exec(f.read(), scope)
    return scope["__version__"]


def long_description():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


setup(
    name="spark-sparse",
    version=version(),
    description="SparK (BERT-style masked image modeling for convnets) on a true sparse-convolution encoder",
    long_description=long_description(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # kernels/, train/ and benchmarks/ sit at the top of the source tree and install as subpackages of
    # spark_sparse (no top-level package with a generic name is ever installed).
    packages=find_packages(include=["spark_sparse", "spark_sparse.*"]) + list(SUBPACKAGES),
    package_dir={"spark_sparse": "spark_sparse", **SUBPACKAGES},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "timm>=1.0",
        "numpy",
        "tensorboard",
        "tqdm",
        "pillow",
        "safetensors",
        "scikit-image",   # its wheel ships the sample photographs of the embedded default data set
        "matplotlib",     # benchmark plots
    ],
    extras_require={
        # spconv: the `spconv` wheel is the CPU build; on CUDA install the matching spconv-cu1xx
        # (e.g. spconv-cu126 with cumm-cu126 on CUDA 12.6) instead — see the README.
        "cpu": ["spconv==2.3.8"],
        "cu118": ["spconv-cu118==2.3.8"],
        "cu120": ["spconv-cu120==2.3.8"],
        "cu126": ["spconv-cu126==2.3.8", "cumm-cu126==0.7.11"],
        "triton": ["triton"],
        "test": ["pytest", "triton", "import-linter", "setuptools"],
    },
    entry_points={"console_scripts": ["spark-sparse=spark_sparse.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
