"""spark_sparse: SparK masked image modeling on a true sparse-convolution encoder."""
from .convert import register_block, register_converter, sparsify
from .encoder import SparseEncoder
from .errors import UnsupportedLayerError
from .features import SparseFeatures
from .geometry import Geometry
from .masks import random_visible
from .reference import MaskedDenseEncoder, register_reference_rule
from .routing import set_routing
from .spark import SparK, build_spark
from . import models  # noqa: F401  (registers ConvNeXt's layers)

__version__ = "0.1.0"

__all__ = ["sparsify", "SparseEncoder", "MaskedDenseEncoder", "random_visible", "SparseFeatures", "Geometry",
           "UnsupportedLayerError", "register_converter", "register_block", "register_reference_rule",
           "SparK", "build_spark", "set_routing", "__version__"]
