"""The converter: a dense timm backbone → a SparseEncoder, layer by layer.

Each dense layer becomes its sparse twin through the layer registry (spark_sparse/registry.py);
containers are rebuilt with the same child names, so parameter names never change. Per-site layers
are kept as they are. Anything not registered is refused with its module path and type.
"""
from __future__ import annotations

from torch import nn

from .backends import check_backend_name
from .encoder import SparseEncoder
from . import models  # noqa: F401 — registers the timm families' layers, so any import path can convert
from .plan import encoder_part
from .registry import Converter


def sparsify(model: nn.Module, *, backend: str = "auto") -> SparseEncoder:
    """Build a SparseEncoder from a dense timm backbone (the model itself is left untouched).

    The encoder copies the model's weights; its ``state_dict()`` has the same keys, shapes and
    layouts as the backbone's minus the classifier head. ``backend`` picks how k×k convolutions
    run: 'auto' (the router's choice per layer, see :mod:`spark_sparse.routing`), 'torch',
    'gather-conv', 'tiles' or 'spconv'. A layer with no sparse meaning raises
    :class:`UnsupportedLayerError` naming its module path and type.
    """
    check_backend_name(backend)
    plan, children = encoder_part(model)
    converter = Converter(backend)
    sparse = {name: converter.convert(child, name) for name, child in children.items()}
    encoder = SparseEncoder(sparse, plan, arch=_arch_name(model))
    return encoder.train(model.training)


def _arch_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture", "")) or type(model).__name__.lower()
