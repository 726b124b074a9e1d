"""Model families beyond the core's ResNets: each module registers its layers' converters and
masked-dense reference rules on import (``spark_sparse`` imports them all)."""
from . import convnext  # noqa: F401
