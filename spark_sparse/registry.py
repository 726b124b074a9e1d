"""One registry of layer types: what each dense layer becomes in the sparse encoder (its sparse
twin) and how it runs in SparK's masked-dense reference, registered together.

Dispatch follows the class hierarchy: a module takes the rules of the first class in its MRO that
is registered, so a subclass runs as its base until it registers rules of its own. Registering a
type again replaces its rules, with a warning. A module whose type has no rules is refused with its
path, its type and the list of registered types, read from here.

This module registers torch.nn's layers; spark_sparse/models/ registers the timm families.

| torch.nn                               | sparse twin                    | masked-dense rule                  |
|----------------------------------------|--------------------------------|------------------------------------|
| Identity, ReLU, ReLU6, GELU, SiLU, …   | kept, per site on (N, C)       | as is (f(0) = 0 keeps zeros)       |
| Sigmoid                                | kept, per site                 | run, re-mask                       |
| Linear                                 | SparseLinear (a routed 1×1)    | on NHWC, re-mask                   |
| LayerNorm (last dim)                   | kept, per site                 | on NHWC, re-mask                   |
| Dropout (p = 0 only)                   | kept                           | as is                              |
| Sequential                             | SparseSequential               | children in order                  |
| Conv2d                                 | SparseConv2d                   | run, re-mask                       |
| any BatchNorm                          | SparseBatchNorm2d              | statistics over active sites       |
| MaxPool2d, AvgPool2d                   | SparseMaxPool2d, SparseAvgPool2d | run, re-mask                     |
| a residual block (``register_block``)  | SparseResidualBlock            | the same program                   |
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import UnsupportedLayerError
from .layers.containers import BlockProgram, SparseResidualBlock, SparseSequential
from .layers.conv import SparseConv2d
from .layers.linear import SparseLinear
from .layers.norm import SparseBatchNorm2d, batch_norm
from .layers.pool import SparseAvgPool2d, SparseMaxPool2d
from .masks import MaskPyramid

SparseRule = Callable[[nn.Module, str, "Converter"], nn.Module]  # (dense module, path, converter) -> sparse
MaskedRule = Callable[[nn.Module, torch.Tensor, MaskPyramid, str], torch.Tensor]  # (module, x, masks, path)


@dataclass(frozen=True)
class LayerRules:
    sparse: SparseRule
    masked: MaskedRule


_REGISTRY: Dict[type, LayerRules] = {}


def register_layer(types, *, sparse: SparseRule, masked: MaskedRule) -> None:
    """Teach the library a layer type (or a tuple of them): its sparse twin and its masked-dense rule."""
    for layer_type in tuple(types) if isinstance(types, (tuple, list)) else (types,):
        if not isinstance(layer_type, type):
            raise TypeError(f"register_layer takes layer classes (e.g. torch.nn.Mish), got {layer_type!r}")
        if layer_type in _REGISTRY:
            warnings.warn(f"layer type {layer_type.__module__}.{layer_type.__qualname__} registered again: "
                          f"its new rules replace the old ones", stacklevel=2)
        _REGISTRY[layer_type] = LayerRules(sparse, masked)


def register_block(block_type: type, program: BlockProgram) -> None:
    """A residual block, described once by its program for both the sparse encoder and the reference."""
    register_layer(block_type, sparse=functools.partial(_sparse_block, program=program),
                   masked=functools.partial(_masked_block, program=program))


def supported_layers() -> str:
    """The registered layer types, by library, in registration order (for error messages)."""
    groups: Dict[str, List[str]] = {}
    for layer_type in _REGISTRY:
        library = layer_type.__module__.split(".")[0]
        name = layer_type.__name__.lstrip("_")  # torch's _BatchNorm: any BatchNorm
        groups.setdefault("torch.nn" if library == "torch" else library, []).append(name)
    return "; ".join(f"{library}: {', '.join(names)}" for library, names in groups.items())


def _lookup(module: nn.Module) -> Optional[LayerRules]:
    """The rules of the first registered class of the module type's MRO (None: no class is)."""
    return next((_REGISTRY[cls] for cls in type(module).__mro__ if cls in _REGISTRY), None)


def rules_for(module: nn.Module, path: str) -> LayerRules:
    rules = _lookup(module)
    if rules is not None:
        return rules
    raise UnsupportedLayerError(path, module, f"no sparse twin or masked-dense rule is registered for its type "
                                              f"(registered: {supported_layers()})")


class Converter:
    """Turns dense modules into their sparse twins; rules call back into it for their children."""

    def __init__(self, backend: str):
        self.backend = backend

    def convert(self, module: nn.Module, path: str) -> nn.Module:
        sparse = rules_for(module, path).sparse(module, path, self)
        sparse.train(module.training)
        return sparse

    def convert_children(self, dense: nn.Module, sparse: nn.Module, path: str) -> nn.Module:
        for name, child in dense.named_children():
            setattr(sparse, name, self.convert(child, f"{path}.{name}" if path else name))
        return sparse


def masked_forward(module: nn.Module, x: torch.Tensor, masks: MaskPyramid, path: str = "") -> torch.Tensor:
    """Run one dense module with SparK's masking (``x`` is zero at masked sites, and so is the result)."""
    return rules_for(module, path).masked(module, x, masks, path)


# ---- rules shared by many types ----------------------------------------------------------------------
def keep_dense(module, path, converter):
    """Sparse twin of a per-site layer: the layer itself, on the (N, C) feature matrix."""
    return module


def run_as_is(module, x, masks, path):
    """Masked rule of a per-site layer with f(0) = 0 (or one that only scales): masked sites stay zero."""
    return module(x)


def run_and_remask(module, x, masks, path):
    y = module(x)
    return y * masks.like(y)


def run_channels_last(module, x, masks, path):
    """A per-site layer over the last dim (Linear, LayerNorm) on NHWC, re-masked (its f(0) may be != 0)."""
    y = module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return y * masks.like(y)


# ---- torch.nn ----------------------------------------------------------------------------------------
def _dropout(module: nn.Dropout, path, converter):
    if module.p != 0.0:
        raise UnsupportedLayerError(path, module, "dropout with p > 0 would draw per site, not per pixel as the "
                                                  "dense model does; set its rate to 0 (SparK uses none)")
    return module


def _sparse_sequential(module, path, converter):
    return converter.convert_children(module, SparseSequential(), path)


def masked_children(module, x, masks, path, children=None):
    """Masked rule of a container that calls its children one after the other: ``children``
    [(name, child)] in call order (None: in registration order)."""
    for name, child in module.named_children() if children is None else children:
        x = masked_forward(child, x, masks, f"{path}.{name}" if path else name)
    return x


def _masked_batch_norm(module, x, masks, path):
    """Statistics over the active sites (across the processes of a SparseSyncBatchNorm's group)."""
    return batch_norm(module, x, (0, 2, 3), masks.like(x), group=getattr(module, "process_group", None))


def _sparse_block(module, path, converter, program: BlockProgram):
    for name in ("se", "attn", "drop_block", "aa"):
        child = getattr(module, name, None)
        if child is not None and not isinstance(child, nn.Identity):
            raise UnsupportedLayerError(f"{path}.{name}", child, "no sparse meaning is implemented for it")
    program.check(module, path)
    sparse = converter.convert_children(module, SparseResidualBlock(program), path)
    for name, param in module.named_parameters(recurse=False):  # e.g. ConvNeXt's layer scale
        sparse.register_parameter(name, param)
    return sparse


def check_block_programs(root: nn.Module) -> None:
    """Check the program of every residual block under ``root`` against the block (see
    ``BlockProgram.check``): once, when the masked-dense reference is built, not on every forward."""
    for path, module in root.named_modules():
        rules = _lookup(module)
        program = rules and getattr(rules.masked, "keywords", {}).get("program")
        if program is not None:
            program.check(module, path)


def _masked_block(block, x, masks, path, program: BlockProgram):
    return program.run(block, x, call=lambda name, child, y: masked_forward(child, y, masks, f"{path}.{name}"),
                       scale=lambda y, gamma: y * gamma.view(1, -1, 1, 1),  # layer scale: per site, keeps zeros
                       add=lambda y, shortcut: y + shortcut)


register_layer((nn.Identity, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.Tanh),
               sparse=keep_dense, masked=run_as_is)
register_layer(nn.Sigmoid, sparse=keep_dense, masked=run_and_remask)
register_layer(nn.Linear, sparse=lambda m, path, c: SparseLinear.from_dense(m, path), masked=run_channels_last)
register_layer(nn.LayerNorm, sparse=keep_dense, masked=run_channels_last)
register_layer(nn.Dropout, sparse=_dropout, masked=run_as_is)
register_layer(nn.Sequential, sparse=_sparse_sequential, masked=masked_children)
register_layer(nn.Conv2d, sparse=lambda m, path, c: SparseConv2d.from_dense(m, path, c.backend), masked=run_and_remask)
register_layer(_BatchNorm, sparse=lambda m, path, c: SparseBatchNorm2d.from_dense(m), masked=_masked_batch_norm)
register_layer(nn.MaxPool2d, sparse=lambda m, path, c: SparseMaxPool2d.from_dense(m, path), masked=run_and_remask)
register_layer(nn.AvgPool2d, sparse=lambda m, path, c: SparseAvgPool2d.from_dense(m, path), masked=run_and_remask)
