"""spark_sparse: SparK masked image modeling on a true sparse-convolution encoder.

The subpackages ``kernels``, ``train`` and ``benchmarks`` live at the top of the source tree
(kernels/, train/, benchmarks/). An installed wheel and the editable install map them into this
package (setup.py's ``package_dir``). A plain checkout run with the repository root on the path
(``python -m pytest``, ``python -m spark_sparse.cli``) has no such mapping, so there this package's
``__path__`` also lists the repository root, the one place those folders are found; no symlinks
(which some systems lack) and no top-level ``kernels`` / ``train`` package.

The public names below are imported on first use (PEP 562), so ``import spark_sparse.cli`` — and with
it ``spark-sparse --help`` or a mistyped option — does not wait for torch, timm and torchvision.
The first use of any of them also imports ``spark_sparse.models``, which registers the timm families'
layers.
"""
import importlib as _importlib
import os as _os

from .version import __version__

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (_os.path.isfile(_os.path.join(_ROOT, "setup.py")) and _os.path.isdir(_os.path.join(_ROOT, "kernels"))
        and not _os.path.isdir(_os.path.join(__path__[0], "kernels"))):
    __path__.append(_ROOT)  # a source checkout: spark_sparse.kernels → <root>/kernels, …

# public name → the module that defines it
_EXPORTS = {"sparsify": "convert", "SparseEncoder": "encoder", "UnsupportedLayerError": "errors",
            "SparseFeatures": "features", "Geometry": "geometry", "BlockProgram": "layers.containers",
            "random_visible": "masks", "MaskedDenseEncoder": "reference", "register_block": "registry",
            "register_layer": "registry", "supported_layers": "registry", "set_routing": "routing",
            "SparK": "spark", "build_spark": "spark"}

__all__ = ["sparsify", "SparseEncoder", "MaskedDenseEncoder", "random_visible", "SparseFeatures", "Geometry",
           "UnsupportedLayerError", "register_layer", "register_block", "BlockProgram", "supported_layers",
           "SparK", "build_spark", "set_routing", "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        try:  # a submodule, e.g. ``ss.masks``, as the package gave before its names loaded lazily
            module = _importlib.import_module("." + name, __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise  # the submodule exists but something it imports does not
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        _importlib.import_module(".models", __name__)  # registers the timm families' layers
        return module
    _importlib.import_module(".models", __name__)  # registers the timm families' layers
    value = getattr(_importlib.import_module("." + _EXPORTS[name], __name__), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
