"""Activation checkpointing: run a block keeping only its input, and run it again in the backward pass.

Used by the decoder (``decoder_checkpointing``) and by the sparse encoder's residual blocks
(``encoder_checkpointing``): less memory for one more forward of what is recomputed, and the same
numbers. torch's non-reentrant checkpoint restores the RNG state for the recomputation (drop path
draws the same masks) and accepts any inputs and outputs (SparseFeatures too).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def recomputing(module: nn.Module) -> bool:
    """Whether a call of ``module`` now would keep activations for a backward pass worth recomputing."""
    return module.training and torch.is_grad_enabled()


def run_recomputed(module: nn.Module, function, *args, replay=None):
    """``function(*args)`` under activation checkpointing; ``module``'s buffers (BatchNorm running
    statistics and batch counters) stay as the first forward left them. ``replay``: a function
    returning (forward context, recompute context) for this call, so that the recomputation makes
    the choices the forward made (the sparse layers' routes)."""
    def contexts():
        forward, recompute = replay() if replay is not None else (nullcontext(), nullcontext())
        return forward, _both(_buffers_kept(module), recompute)

    return checkpoint(function, *args, use_reentrant=False, context_fn=contexts)


@contextmanager
def _both(first, second):
    with first, second:
        yield


@contextmanager
def _buffers_kept(module: nn.Module):
    """The recomputation runs the block's BatchNorms in training mode a second time: keep their
    running statistics (and batch counters) as the first forward left them."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
