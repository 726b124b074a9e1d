"""The whole SparK training step as the benchmark runs it: the one adapter to ``spark_sparse.spark``.

Every step contender is ``SparK(encoder)`` with the same decoder, loss and optimizer; each call is
split into phases by :class:`~spark_sparse.step_timer.StepTimer` (encoder / densify / decoder / loss
forward, decoder / densify / encoder backward, optimizer) and counts the activation memory each
forward phase keeps for the backward pass.
"""
from __future__ import annotations

import statistics
from typing import Dict, List

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spark_sparse.recipe import DECODER_WIDTH, WEIGHT_DECAY
from spark_sparse.spark import SparK
from spark_sparse.step_timer import StepTimer
from spark_sparse.precision import autocast



def tensor_bytes(tensors) -> int:
    return sum(t.nelement() * t.element_size() for t in tensors)


class SparkStep:
    """``step(images, visible)``: forward with the loss, backward, optimizer step; ``reset()`` zeroes grads.

    ``phases`` holds every call's milliseconds per phase; ``memory`` the last call's memory split.
    """

    def __init__(self, model: SparK, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype,
                 device: torch.device):
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        self.device = device
        # fp16 trains with loss scaling (as real fp16 training does); bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        self.phases: List[Dict[str, float]] = []
        self.memory: Dict[str, int] = {}

    def loss(self, images: torch.Tensor, visible: torch.Tensor, probe=None) -> torch.Tensor:
        with autocast(images.device, self.amp_dtype):
            return self.model(images, visible, probe=probe)

    def __call__(self, images: torch.Tensor, visible: torch.Tensor) -> None:
        timer = StepTimer(self.device, count_memory=True, exclude=list(self.model.parameters()))
        loss = self.loss(images, visible, probe=timer)
        if self.scaler is not None:
            timer.backward(lambda: self.scaler.scale(loss).backward())
            with timer.phase("optimizer"):
                self.scaler.step(self.optimizer)
                self.scaler.update()
        else:
            timer.backward(loss.backward)
            with timer.phase("optimizer"):
                self.optimizer.step()
        self.phases.append(timer.ms)
        self.memory = self.memory_split(timer.saved_bytes)

    def memory_split(self, saved: Dict[str, int]) -> Dict[str, int]:
        """Bytes of the step by owner: each part's activations kept for backward, its parameters and
        gradients, and the optimizer's state."""
        enc = list(self.model.encoder.parameters())
        ids = {id(p) for p in enc}
        head = [p for p in self.model.parameters() if id(p) not in ids]
        state = [v for s in self.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return {"encoder_activations": saved.get("encoder_fwd", 0),
                "encoder_weights_grads": 2 * tensor_bytes(enc),
                "head_activations": sum(saved.get(p, 0) for p in ("densify", "decoder_fwd", "loss")),
                "head_weights_grads": 2 * tensor_bytes(head),
                "optimizer_state": tensor_bytes(state)}

    def median_phases(self, last: int) -> Dict[str, float]:
        """Median milliseconds of each phase over the last ``last`` calls (the timed ones)."""
        calls = self.phases[-last:]
        return {name: statistics.median(c.get(name, 0.0) for c in calls) for name in calls[0]} if calls else {}

    def reset(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def forward_macs(self, images: torch.Tensor, visible: torch.Tensor) -> int:
        """MACs of the dense ops (convs, matmuls) of one loss forward, from torch's flop counter."""
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            self.loss(images, visible)
        return counter.get_total_flops() // 2


def make_step(encoder: nn.Module, *, amp_dtype: torch.dtype = torch.float32, decoder_width: int = DECODER_WIDTH,
              lr: float = 1e-4, head_format: str = "channels_last", decoder_checkpointing: bool = False,
              encoder_checkpointing: bool = False, as_published: bool = False) -> SparkStep:
    """A SparK pre-training step around ``encoder`` (sparse, masked-dense or dense).
    ``decoder_width`` is the LightDecoder's (SparK's 768 unless a test wants a small head).
    ``as_published``: the decoder runs every layer as SparK's code does (the "as published"
    contender; :meth:`~spark_sparse.decoder.LightDecoder.set_as_published`) instead of ours.

    The optimizer is AdamW: SparK trains with LAMB, whose per-parameter cost is of the same
    (elementwise) kind and small next to the convolutions; every contender gets the same one.
    """
    device = next(encoder.parameters()).device
    model = SparK(encoder, decoder_width=decoder_width, head_format=head_format,
                  decoder_checkpointing=decoder_checkpointing,
                  encoder_checkpointing=encoder_checkpointing).to(device).train()
    model.decoder.set_as_published(as_published)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    return SparkStep(model, optimizer, amp_dtype, device)
