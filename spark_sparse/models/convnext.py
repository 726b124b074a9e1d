"""timm ConvNeXt V1 (``convnext_atto … convnext_large``) and V2 (``convnextv2_*``, GRN): the
sparse twins and the masked-dense reference rules of their layer types, in one place.

| dense (timm)                         | sparse                                   | masked-dense reference           |
|--------------------------------------|------------------------------------------|----------------------------------|
| stem 4×4/4 conv, downsample 2×2/2    | SparseConv2d, "patchify" (tile reshape)  | conv, re-mask                    |
| ``LayerNorm2d`` (channels first)     | SparseLayerNorm, per site                | LN, re-mask (LN(0) is the bias)  |
| ``LayerNorm`` (last dim)             | kept, per site on (N, C)                 | on NHWC, re-mask                 |
| ``Linear`` (the MLP's)               | SparseLinear: a routed 1×1 on (N, C)     | on NHWC, re-mask                 |
| depthwise 7×7 conv (bias)            | SparseConv2d → kernels/depthwise.py      | conv, re-mask                    |
| ``GlobalResponseNorm`` (V2)          | per image over its active sites          | GRN (zeros add nothing), re-mask |
| ``Mlp`` / ``GlobalResponseNormMlp``  | the children in call order               | the children in call order       |
| ``ConvNeXtBlock``                    | block program, ``gamma`` = layer scale   | the same program                 |
| ``ConvNeXtStage``                    | downsample, then blocks                  | downsample, then blocks          |

The encoder stops at ``stages.3``: the head (``norm_pre``, ``head.norm``, pooling, classifier) is
not part of it, so its state_dict is the backbone's minus those.
"""
from __future__ import annotations

from typing import Sequence

from timm.layers import GlobalResponseNormMlp, LayerNorm2d, Mlp
from timm.layers.activations import GELU, GELUTanh
from timm.layers.grn import GlobalResponseNorm
from timm.models.convnext import ConvNeXtBlock, ConvNeXtStage
from torch import nn

from ..errors import UnsupportedLayerError
from ..layers.containers import BlockProgram, SparseSequential
from ..layers.grn import SparseGlobalResponseNorm
from ..layers.layernorm import SparseLayerNorm
from ..registry import keep_dense, masked_children, register_block, register_layer, run_and_remask, run_as_is

# The order in which each container's forward calls its children (absent names are skipped).
MLP_ORDER = ("fc1", "act", "drop1", "norm", "grn", "fc2", "drop2")
STAGE_ORDER = ("downsample", "blocks")
BLOCK_PROGRAM = BlockProgram(("conv_dw", "norm", "mlp", "gamma", "drop_path"), "shortcut", None)


def _children_in_order(module: nn.Module, order: Sequence[str], path: str):
    names = [name for name, _ in module.named_children()]
    unknown = [n for n in names if n not in order]
    if unknown:
        raise UnsupportedLayerError(path, module, f"unexpected children {unknown}: only {list(order)} are known "
                                                  f"(in that call order)")
    return [(name, getattr(module, name)) for name in order if name in names]


def register_chain(types, order: Sequence[str]) -> None:
    """A container whose forward calls its children one after the other, in ``order``."""
    def sparse(module, path, converter):
        twin = SparseSequential()
        for name, child in _children_in_order(module, order, path):
            twin.add_module(name, converter.convert(child, f"{path}.{name}"))
        return twin

    def masked(module, x, masks, path):
        return masked_children(module, x, masks, path, _children_in_order(module, order, path))

    register_layer(types, sparse=sparse, masked=masked)


def _grn(module, x, masks, path):
    """timm's GRN on the masked map (zeros add nothing to its norms), then re-masked (bias)."""
    channels_last = module.channel_dim == -1
    y = module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if channels_last else module(x)
    return y * masks.like(y)


# timm's own GELUs (what ``act_layer='gelu'`` builds): per site, and GELU(0) = 0 keeps masked zeros.
register_layer((GELU, GELUTanh), sparse=keep_dense, masked=run_as_is)
register_layer(LayerNorm2d, sparse=lambda m, path, converter: SparseLayerNorm.from_dense(m), masked=run_and_remask)
register_layer(GlobalResponseNorm, sparse=lambda m, path, converter: SparseGlobalResponseNorm.from_dense(m),
               masked=_grn)
register_chain((Mlp, GlobalResponseNormMlp), MLP_ORDER)
register_chain(ConvNeXtStage, STAGE_ORDER)
register_block(ConvNeXtBlock, BLOCK_PROGRAM)  # a shortcut other than Identity (Downsample) is refused
