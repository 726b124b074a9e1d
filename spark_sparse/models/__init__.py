"""The timm model families: each module registers its layer types' sparse twins and masked-dense
rules on import (``spark_sparse`` imports them all)."""
from . import convnext, resnet  # noqa: F401
