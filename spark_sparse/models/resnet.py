"""timm ResNets (``resnet18 … resnet200``, the ``d`` variants): their residual blocks' programs and
DropPath. Every other layer of theirs is torch.nn's (see spark_sparse/registry.py)."""
from __future__ import annotations

from timm.layers import DropPath
from timm.models.resnet import BasicBlock, Bottleneck

from ..layers.containers import BlockProgram
from ..layers.drop import SparseDropPath
from ..registry import register_block, register_layer, run_as_is

register_layer(DropPath, sparse=lambda m, path, converter: SparseDropPath.from_dense(m), masked=run_as_is)
register_block(BasicBlock, BlockProgram(
    ("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2", "drop_path"), "downsample", "act2"))
register_block(Bottleneck, BlockProgram(
    ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3", "drop_path"),
    "downsample", "act3"))
