"""Containers: a sequence of layers, and a residual block described by its forward "program".

A residual block's program lists the children its main branch runs, in order, the shortcut child
and the activation after the addition. A main-branch name may also be a parameter of the block
itself: a per-channel scale (ConvNeXt's layer scale ``gamma``). The sparse block and the
masked-dense reference both read the same program, so each block type's wiring is written once
(``registry.register_block``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from torch import nn

from ..features import SparseFeatures
from .base import SparseModule, run_layer


class SparseSequential(nn.Sequential, SparseModule):
    def forward(self, x: SparseFeatures) -> SparseFeatures:  # type: ignore[override]
        for module in self:
            x = run_layer(module, x)
        return x


@dataclass(frozen=True)
class BlockProgram:
    """``out = post(main(x) + shortcut(x))``; names are the block's child (or scale parameter) names."""
    main: Tuple[str, ...]
    shortcut: Optional[str]
    post: Optional[str]


class SparseResidualBlock(SparseModule):
    """A residual block run on SparseFeatures; children keep the dense block's names."""

    def __init__(self, program: BlockProgram):
        super().__init__()
        self.program = program

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        shortcut = x
        for name in self.program.main:
            step = getattr(self, name, None)
            if isinstance(step, nn.Parameter):
                x = x.replace(x.features * step)  # layer scale
            elif step is not None:
                x = run_layer(step, x)
        if self.program.shortcut and getattr(self, self.program.shortcut, None) is not None:
            shortcut = run_layer(getattr(self, self.program.shortcut), shortcut)
        x = x.replace(x.features + shortcut.features)
        if self.program.post:
            x = run_layer(getattr(self, self.program.post), x)
        return x
