"""The whole SparK training step: the one adapter between the benchmark and ``spark_sparse.spark``.

Written against the expected API ``SparK(encoder)`` and ``loss = model(images, visible)`` — a
model wrapping any encoder (SparseEncoder, MaskedDenseEncoder, or the plain DenseEncoder) with
densify, the dense LightDecoder and the loss. When that API differs, this file is the only one
to adjust. Until ``spark_sparse.spark`` exists the step is reported as unavailable: never
approximated by something else.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .contenders import autocast

NOT_INSTALLED = "unavailable (SparK head not installed)"


def spark_status() -> Optional[str]:
    """None when ``spark_sparse.spark.SparK`` can be used; otherwise why not, as reported."""
    try:
        module = importlib.import_module("spark_sparse.spark")
    except ModuleNotFoundError as e:
        if e.name == "spark_sparse.spark":
            return NOT_INSTALLED
        return f"unavailable (spark_sparse.spark cannot be imported: {e})"
    if not hasattr(module, "SparK"):
        return "unavailable (spark_sparse.spark has no SparK)"
    return None


class SparkStep:
    """``step(images, visible)``: forward with the loss, backward, optimizer step; ``reset()`` zeroes grads."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype,
                 device: torch.device):
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        # fp16 trains with loss scaling (as real fp16 training does); bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def loss(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.amp_dtype):
            return self.model(images, visible)

    def __call__(self, images: torch.Tensor, visible: torch.Tensor) -> None:
        loss = self.loss(images, visible)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def reset(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def forward_macs(self, images: torch.Tensor, visible: torch.Tensor) -> int:
        """MACs of the dense ops (convs, matmuls) of one loss forward, from torch's flop counter."""
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            self.loss(images, visible)
        return counter.get_total_flops() // 2


def make_step(encoder_kind: str, model_name: str, encoder: nn.Module, *,
              amp_dtype: torch.dtype = torch.float32, decoder_width: int = 768, lr: float = 1e-4) -> SparkStep:
    """A SparK pre-training step around ``encoder`` (of ``encoder_kind`` 'sparse', 'masked_dense' or
    'dense', for timm model ``model_name``): the place for per-kind or per-model SparK options.
    ``decoder_width`` is the LightDecoder's (SparK's 768 unless a test wants a small head).

    The optimizer is AdamW: SparK trains with LAMB, whose per-parameter cost is of the same
    (elementwise) kind and small next to the convolutions; every contender gets the same one.
    """
    from spark_sparse.spark import SparK
    device = next(encoder.parameters()).device
    model = SparK(encoder, decoder_width=decoder_width).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.04)
    return SparkStep(model, optimizer, amp_dtype, device)
