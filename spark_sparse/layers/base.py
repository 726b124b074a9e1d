"""The marker class of layers that take SparseFeatures, and how containers call any child.

Per-site layers (activations, Linear, channels-last LayerNorm, Identity) need no sparse twin:
they run unchanged on the (N, C) feature matrix, so the converter keeps the dense module itself
and its state_dict keys stay those of the dense model.
"""
from __future__ import annotations

from torch import nn

from ..features import SparseFeatures


class SparseModule(nn.Module):
    """A layer whose forward takes and returns SparseFeatures."""


def run_layer(module: nn.Module, x: SparseFeatures) -> SparseFeatures:
    """Call a sparse layer on ``x``, or a per-site dense layer on its feature matrix."""
    if isinstance(module, SparseModule):
        return module(x)
    return x.replace(module(x.features))
