"""MaskedDenseEncoder: SparK's masked-dense semantics in plain PyTorch — the oracle and the baseline.

Every layer runs densely on the whole image; after each spatial layer the output is zeroed at
masked sites of its resolution, and BatchNorm takes its statistics over active sites only (each
layer type's rule is in the layer registry, beside its sparse twin). This pays the full dense cost
at any mask ratio, which is what the sparse encoder is measured against. The mask is passed down
explicitly (a ``MaskPyramid``), never kept in a global.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .masks import MaskPyramid, check_visible
from . import models  # noqa: F401 — registers the timm families' layers, so any import path has their rules
from .plan import PlannedEncoder, encoder_part
from .registry import check_block_programs, masked_forward


class MaskedDenseEncoder(PlannedEncoder):
    """SparK's reference encoder with the SparseEncoder's call: ``(images, visible) → list of maps``.

    Holds a copy of the backbone's modules under their own names (same state_dict keys as the
    SparseEncoder), so weights load into either.
    """

    def __init__(self, model: nn.Module):
        super().__init__(*encoder_part(model))
        check_block_programs(self)
        self.train(model.training)

    def forward(self, images: torch.Tensor, visible: torch.Tensor) -> List[torch.Tensor]:
        visible = check_visible(visible, images, self.patch_size)
        self.check_images(images)
        masks = MaskPyramid(visible, self.patch_size, images.dtype)
        # where, not a product: inf or NaN pixels in a masked patch must not leak through as inf·0 = NaN
        return self.run_plan(torch.where(masks.like(images) > 0, images, 0),
                             lambda module, x, path: masked_forward(module, x, masks, path))
