"""spark_sparse: SparK masked image modeling on a true sparse-convolution encoder.

The subpackages ``kernels``, ``train`` and ``benchmarks`` live at the top of the source tree
(kernels/, train/, benchmarks/). An installed wheel and the editable install map them into this
package (setup.py's ``package_dir``). A plain checkout run with the repository root on the path
(``python -m pytest``, ``python -m spark_sparse.cli``) has no such mapping, so there this package's
``__path__`` also lists the repository root, the one place those folders are found; no symlinks
(which some systems lack) and no top-level ``kernels`` / ``train`` package.
"""
import os as _os

__version__ = "0.1.0"  # first: modules imported below read it

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (_os.path.isfile(_os.path.join(_ROOT, "setup.py")) and _os.path.isdir(_os.path.join(_ROOT, "kernels"))
        and not _os.path.isdir(_os.path.join(__path__[0], "kernels"))):
    __path__.append(_ROOT)  # a source checkout: spark_sparse.kernels → <root>/kernels, …
from .convert import sparsify
from .encoder import SparseEncoder
from .errors import UnsupportedLayerError
from .features import SparseFeatures
from .geometry import Geometry
from .layers.containers import BlockProgram
from .masks import random_visible
from .reference import MaskedDenseEncoder
from .registry import register_block, register_layer, supported_layers
from .routing import set_routing
from .spark import SparK, build_spark
from . import models  # noqa: F401  (registers the timm families' layers)


__all__ = ["sparsify", "SparseEncoder", "MaskedDenseEncoder", "random_visible", "SparseFeatures", "Geometry",
           "UnsupportedLayerError", "register_layer", "register_block", "BlockProgram", "supported_layers",
           "SparK", "build_spark", "set_routing", "__version__"]
