"""Containers: a sequence of layers, and a residual block described by its forward "program".

A residual block's program lists the children its main branch runs, in order, the shortcut child
and the activation after the addition. A main-branch name may also be a parameter of the block
itself: a per-channel scale (ConvNeXt's layer scale ``gamma``). The sparse block and the
masked-dense reference both read the same program, so each block type's wiring is written once
(``registry.register_block``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, TypeVar

import torch
from torch import nn

from ..features import SparseFeatures
from ..recompute import recomputing
from .base import SparseModule, run_checkpointed, run_layer


class SparseSequential(nn.Sequential, SparseModule):
    def forward(self, x: SparseFeatures) -> SparseFeatures:  # type: ignore[override]
        for module in self:
            x = run_layer(module, x)
        return x


T = TypeVar("T")


@dataclass(frozen=True)
class BlockProgram:
    """``out = post(main(x) + shortcut(x))``; names are the block's child (or scale parameter) names."""
    main: Tuple[str, ...]
    shortcut: Optional[str]
    post: Optional[str]

    def run(self, block: nn.Module, x: T, call: Callable[[str, nn.Module, T], T],
            scale: Callable[[T, nn.Parameter], T], add: Callable[[T, T], T]) -> T:
        """The program on ``x``: the one interpreter of it, for the sparse block (SparseFeatures) and
        the masked-dense reference (dense maps) alike. ``call(name, child, x)`` runs a child,
        ``scale(x, parameter)`` a per-channel scale, ``add(main, shortcut)`` the residual sum; a name
        that is None on the block (a layer the block was built without) is skipped."""
        shortcut = x
        for name in self.main:
            step = getattr(block, name, None)
            if isinstance(step, nn.Parameter):
                x = scale(x, step)  # layer scale
            elif step is not None:
                x = call(name, step, x)
        if self.shortcut and getattr(block, self.shortcut, None) is not None:
            shortcut = call(self.shortcut, getattr(block, self.shortcut), shortcut)
        x = add(x, shortcut)
        if self.post:
            x = call(self.post, getattr(block, self.post), x)
        return x

    def check(self, block: nn.Module, path: str) -> None:
        """Refuse a program that names what ``block`` does not have, or leaves out a child it has: the
        sparse encoder and the reference read the same program, so a typo would drop a layer from both
        alike, where comparing the two cannot see it. (A name may be None on the block: a layer the
        block was built without.)"""
        names = [n for n in (*self.main, self.shortcut, self.post) if n]
        missing = [n for n in names if not hasattr(block, n)]
        unused = [n for n, child in block.named_children() if n not in names and not isinstance(child, nn.Identity)]
        if missing or unused:
            what = (f"names {missing}, which the block does not have" if missing else
                    f"never runs its child(ren) {unused}")
            raise ValueError(f"{path or '<root>'} ({type(block).__name__}): the program registered for it {what}; "
                             f"its children are {[n for n, _ in block.named_children()]} (see register_block)")


class SparseResidualBlock(SparseModule):
    """A residual block run on SparseFeatures; children keep the dense block's names.

    ``checkpointing`` (set by ``SparseEncoder.set_checkpointing``): in training, keep only the
    block's input rows and run the block again in the backward pass.
    """

    def __init__(self, program: BlockProgram):
        super().__init__()
        self.program = program
        self.checkpointing = False

    def forward(self, x: SparseFeatures) -> SparseFeatures:
        if self.checkpointing and recomputing(self):
            return run_checkpointed(self, self.run_program, x)
        return self.run_program(x)

    def run_program(self, x: SparseFeatures) -> SparseFeatures:
        block_input = x.features
        return self.program.run(
            self, x, call=lambda name, child, y: run_layer(child, y),  # post: an in-place ReLU, no new buffer
            scale=lambda y, gamma: y.replace(y.features * gamma),
            add=lambda y, shortcut: y.replace(residual_add(y.features, shortcut.features, block_input)))


def residual_add(main: torch.Tensor, shortcut: torch.Tensor, block_input: torch.Tensor) -> torch.Tensor:
    """``main + shortcut``, into ``main``'s buffer when that is a fresh intermediate of the block.

    The main branch ends in a BN, a layer scale or a drop-path, none of which keeps its output for
    backward, so adding in place saves allocating (and page-faulting) a new (N, C) buffer per block;
    autograd's version counters would refuse the backward if a layer did keep it. Not in place when
    ``main`` is the block's input itself (an all-identity branch) or a leaf.
    """
    fresh = main.grad_fn is not None or not torch.is_grad_enabled()
    if fresh and main is not block_input and main is not shortcut and not main._is_view():
        return main.add_(shortcut)
    return main + shortcut
