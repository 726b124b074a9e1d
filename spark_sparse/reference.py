"""MaskedDenseEncoder: SparK's masked-dense semantics in plain PyTorch — the oracle and the baseline.

Every layer runs densely on the whole image; after each spatial layer the output is zeroed at
masked sites of its resolution, and BatchNorm takes its statistics over active sites only. This
pays the full dense cost at any mask ratio, which is what the sparse encoder is measured against.
The mask is passed down explicitly (a ``MaskPyramid``), never kept in a global.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Tuple

import torch
from timm.layers import DropPath
from torch import nn

from .convert import BLOCK_PROGRAMS
from .errors import UnsupportedLayerError
from .masks import check_visible, dense_mask
from .plan import EncoderPlan


class MaskPyramid:
    """The active set of one batch as dense {0,1} maps, one per resolution, made on first use."""

    def __init__(self, visible: torch.Tensor, patch_size: int, dtype: torch.dtype):
        self.visible = visible
        self.patch_size = patch_size
        self.dtype = dtype
        self._maps: Dict[int, torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) mask at the resolution of ``x``."""
        stride = self.patch_size * self.visible.shape[1] // x.shape[-2]
        if stride not in self._maps:
            self._maps[stride] = dense_mask(self.visible, stride, self.patch_size).to(self.dtype)
        return self._maps[stride].to(x.dtype)


def masked_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BatchNorm2d whose batch statistics (and running-stat updates) come from active sites only.

    ``x`` must be zero at masked sites. Computed densely with masked sums (no gather/scatter):
    equal to BatchNorm1d on the active rows, which a unit test checks.
    """
    use_batch_stats = bn.training or bn.running_mean is None
    if use_batch_stats:
        count = mask.sum() * 1.0
        # no active site (every patch masked): statistics 0 instead of 0/0, running statistics untouched,
        # as BatchNorm1d on SparK's empty active set; the output is masked to zero either way
        seen = count > 0
        count = count.clamp(min=1)
        mean = x.sum(dim=(0, 2, 3)) / count
        centred = (x - mean.view(1, -1, 1, 1)) * mask
        var = centred.square().sum(dim=(0, 2, 3)) / count
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                bn.running_mean.copy_(torch.where(seen, bn.running_mean * (1 - momentum) + mean.detach() * momentum,
                                                  bn.running_mean))
                bn.running_var.copy_(torch.where(seen, bn.running_var * (1 - momentum) + unbiased.detach() * momentum,
                                                 bn.running_var))
    else:
        mean, var = bn.running_mean, bn.running_var
        centred = x - mean.view(1, -1, 1, 1)
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    y = centred * scale.view(1, -1, 1, 1)
    if bn.affine:
        y = y + bn.bias.view(1, -1, 1, 1)
    return y * mask


# Per-site layers with f(0) = 0 (and Dropout/DropPath, which scale): no re-masking needed after them.
ZERO_PRESERVING = (nn.Identity, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.Tanh,
                   nn.Dropout)

ReferenceRule = Callable[[nn.Module, torch.Tensor, MaskPyramid, str], torch.Tensor]
_RULES: List[Tuple[Tuple[type, ...], ReferenceRule]] = []


def register_reference_rule(types, rule: ReferenceRule) -> None:
    """Teach the reference how a layer type runs masked-dense; later registrations take precedence."""
    _RULES.insert(0, (tuple(types) if isinstance(types, (tuple, list)) else (types,), rule))


def masked_forward(module: nn.Module, x: torch.Tensor, masks: MaskPyramid, path: str = "") -> torch.Tensor:
    """Run one dense module with SparK's masking (dispatch on the module type)."""
    for types, rule in _RULES:
        if isinstance(module, types):
            return rule(module, x, masks, path)
    for block_type, program in BLOCK_PROGRAMS.items():
        if isinstance(module, block_type):
            return _masked_block(module, program, x, masks, path)
    raise UnsupportedLayerError(path, module, "the masked-dense reference has no rule for it either")


def _spatial(module, x, masks, path):
    y = module(x)
    return y * masks.like(y)


def _batch_norm(module, x, masks, path):
    return masked_batch_norm(module, x, masks.like(x))


def _sequential(module, x, masks, path):
    for name, child in module.named_children():
        x = masked_forward(child, x, masks, f"{path}.{name}" if path else name)
    return x


def _zero_preserving(module, x, masks, path):
    return module(x)  # maps zeros to zeros: masked sites stay zero


def _pointwise(module, x, masks, path):
    y = module(x)
    return y * masks.like(y)


def _channels_last(module, x, masks, path):
    """A per-site layer over the last dim (Linear, LayerNorm): run on NHWC, re-mask (its f(0) may be != 0)."""
    y = module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return y * masks.like(y)


register_reference_rule((nn.Linear, nn.LayerNorm), _channels_last)
register_reference_rule((nn.Sigmoid,), _pointwise)
register_reference_rule(ZERO_PRESERVING + (DropPath,), _zero_preserving)
register_reference_rule(nn.Sequential, _sequential)
register_reference_rule(nn.modules.batchnorm._BatchNorm, _batch_norm)
register_reference_rule((nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d), _spatial)


def _masked_block(block, program, x, masks, path):
    shortcut = x
    for name in program.main:
        step = getattr(block, name, None)
        if isinstance(step, nn.Parameter):
            x = x * step.view(1, -1, 1, 1)  # layer scale: per site, keeps zeros
        elif step is not None:
            x = masked_forward(step, x, masks, f"{path}.{name}")
    if program.shortcut and getattr(block, program.shortcut, None) is not None:
        shortcut = masked_forward(getattr(block, program.shortcut), shortcut, masks, f"{path}.{program.shortcut}")
    x = x + shortcut
    if program.post:
        x = masked_forward(getattr(block, program.post), x, masks, f"{path}.{program.post}")
    return x


class MaskedDenseEncoder(nn.Module):
    """SparK's reference encoder with the SparseEncoder's call: ``(images, visible) → list of maps``.

    Holds a copy of the backbone's modules under their own names (same state_dict keys as the
    SparseEncoder), so weights load into either.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.plan = EncoderPlan.from_model(model)
        for name in self.plan.top_level:
            self.add_module(name, copy.deepcopy(model.get_submodule(name)))
        self.train(model.training)

    @property
    def strides(self) -> List[int]:
        return list(self.plan.strides)

    @property
    def channels(self) -> List[int]:
        return list(self.plan.channels)

    @property
    def patch_size(self) -> int:
        return self.plan.patch_size

    def forward(self, images: torch.Tensor, visible: torch.Tensor) -> List[torch.Tensor]:
        visible = check_visible(visible, images, self.patch_size)
        masks = MaskPyramid(visible, self.patch_size, images.dtype)
        x = images * masks.like(images)
        outputs = []
        for path in self.plan.run:
            x = masked_forward(self.get_submodule(path), x, masks, path)
            if path in self.plan.features:
                outputs.append(x)
        return outputs
