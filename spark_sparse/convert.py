"""The converter: a dense timm backbone → a SparseEncoder, layer by layer.

Each dense layer type maps to a sparse one through a registered converter; containers are
rebuilt with the same child names, so parameter names never change. Per-site layers are kept as
they are. Anything not registered is refused with its module path and type.
"""
from __future__ import annotations

import copy
from typing import Callable, List, Tuple, Type

from torch import nn

from .backends import check_backend_name
from .encoder import SparseEncoder
from .errors import UnsupportedLayerError
from .layers.containers import BlockProgram, SparseResidualBlock, SparseSequential
from .layers.conv import SparseConv2d
from .layers.drop import SparseDropPath
from .layers.norm import SparseBatchNorm2d
from .layers.pool import SparseAvgPool2d, SparseMaxPool2d
from .plan import EncoderPlan

ConverterFn = Callable[[nn.Module, str, "Converter"], nn.Module]
_CONVERTERS: List[Tuple[Tuple[Type[nn.Module], ...], ConverterFn]] = []

# Layers that act on each site alone: they run unchanged on the (N, C) feature matrix.
PER_SITE_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.Tanh, nn.Sigmoid,
    nn.Linear, nn.LayerNorm)

# Residual blocks: the children their forward runs (timm's order), the shortcut, the final act.
BLOCK_PROGRAMS: dict = {}


def register_converter(types, fn: ConverterFn) -> None:
    """Teach the converter a layer type; later registrations take precedence."""
    _CONVERTERS.insert(0, (tuple(types) if isinstance(types, (tuple, list)) else (types,), fn))


def register_block(block_type: Type[nn.Module], program: BlockProgram) -> None:
    BLOCK_PROGRAMS[block_type] = program
    register_converter(block_type, _convert_block)


class Converter:
    def __init__(self, backend: str):
        self.backend = backend

    def convert(self, module: nn.Module, path: str) -> nn.Module:
        for types, fn in _CONVERTERS:
            if isinstance(module, types):
                sparse = fn(module, path, self)
                sparse.train(module.training)
                return sparse
        raise UnsupportedLayerError(path, module)

    def convert_children(self, dense: nn.Module, sparse: nn.Module, path: str) -> nn.Module:
        for name, child in dense.named_children():
            setattr(sparse, name, self.convert(child, f"{path}.{name}" if path else name))
        return sparse


def _keep_per_site(module, path, ctx):
    return module


def _dropout(module: nn.Dropout, path, ctx):
    if module.p != 0.0:
        raise UnsupportedLayerError(path, module, "dropout with p > 0 would draw per site, not per pixel as the "
                                                  "dense model does; set its rate to 0 (SparK uses none)")
    return module


def _drop_path(module, path, ctx):
    return SparseDropPath.from_dense(module)


def _sequential(module: nn.Sequential, path, ctx):
    return ctx.convert_children(module, SparseSequential(), path)


def _convert_block(module, path, ctx):
    program = next(p for t, p in BLOCK_PROGRAMS.items() if isinstance(module, t))
    for name in ("se", "attn", "drop_block", "aa"):
        child = getattr(module, name, None)
        if child is not None and not isinstance(child, nn.Identity):
            raise UnsupportedLayerError(f"{path}.{name}", child, "no sparse meaning is implemented for it")
    sparse = ctx.convert_children(module, SparseResidualBlock(program), path)
    for name, param in module.named_parameters(recurse=False):  # e.g. ConvNeXt's layer scale
        sparse.register_parameter(name, param)
    return sparse


register_converter(PER_SITE_TYPES, _keep_per_site)
register_converter(nn.Dropout, _dropout)
register_converter(nn.Sequential, _sequential)
register_converter(nn.Conv2d, lambda m, path, ctx: SparseConv2d.from_dense(m, path, ctx.backend))
register_converter(nn.BatchNorm2d, lambda m, path, ctx: SparseBatchNorm2d.from_dense(m))
register_converter(nn.MaxPool2d, lambda m, path, ctx: SparseMaxPool2d.from_dense(m, path))
register_converter(nn.AvgPool2d, lambda m, path, ctx: SparseAvgPool2d.from_dense(m, path))


def _register_timm() -> None:
    from timm.layers import DropPath
    from timm.models.resnet import BasicBlock, Bottleneck
    register_converter(DropPath, _drop_path)
    register_block(BasicBlock, BlockProgram(
        ("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2", "drop_path"), "downsample", "act2"))
    register_block(Bottleneck, BlockProgram(
        ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3", "drop_path"),
        "downsample", "act3"))


_register_timm()


def sparsify(model: nn.Module, *, backend: str = "auto") -> SparseEncoder:
    """Build a SparseEncoder from a dense timm backbone (the model itself is left untouched).

    The encoder copies the model's weights; its ``state_dict()`` has the same keys, shapes and
    layouts as the backbone's minus the classifier head. ``backend`` picks how k×k convolutions
    run: 'auto' (the router's choice per layer, see :mod:`spark_sparse.routing`), 'torch', 'tiles' or
    'spconv'. A layer with no sparse meaning raises
    :class:`UnsupportedLayerError` naming its module path and type.
    """
    check_backend_name(backend)
    plan = EncoderPlan.from_model(model)
    ctx = Converter(backend)
    children = {name: ctx.convert(copy.deepcopy(model.get_submodule(name)), name) for name in plan.top_level}
    encoder = SparseEncoder(children, plan, arch=_arch_name(model))
    return encoder.train(model.training)


def _arch_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture", "")) or type(model).__name__.lower()
