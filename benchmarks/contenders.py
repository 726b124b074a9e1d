"""The three contenders, built from one timm model so they share its weights, and their calls.

- ``sparse[<backend>]``: :func:`spark_sparse.sparsify` — computes the visible sites only;
- ``masked-dense``: :class:`spark_sparse.MaskedDenseEncoder` — SparK's way: dense convs on the whole
  image, masked sites zeroed after every layer, BN statistics over the active sites;
- ``dense``: the timm model's own layers through the same stages on the unmasked image — no
  masking work at all, the floor any masked-dense method pays.

Every contender is called as ``encoder(images, visible) -> list of stage maps``; the dense one
ignores ``visible``. Dense contenders may run channels-last (see :func:`choose_dense_format`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

import spark_sparse as ss
from spark_sparse.masks import patch_grid
from spark_sparse.plan import PATCH_SIZE, PlannedEncoder, encoder_part
from spark_sparse.precision import autocast

SPARSE_FORMAT = "sites x channels"


class DenseEncoder(PlannedEncoder):
    """The backbone's own layers up to its last stage, on the whole image: the reference's modules
    and stages without any of its masking (``visible`` is ignored)."""

    def __init__(self, model: nn.Module):
        super().__init__(*encoder_part(model))
        self.train(model.training)

    def forward(self, images: torch.Tensor, visible: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        return self.run_plan(images, lambda module, x, path: module(x))


@dataclass
class Contender:
    name: str                 # 'sparse[torch]', 'masked-dense', 'dense'
    kind: str                 # 'sparse', 'masked_dense', 'dense'
    encoder: nn.Module
    backend: Optional[str] = None
    memory_format: str = "contiguous"   # SPARSE_FORMAT for sparse ones

    def set_format(self, memory_format: str) -> "Contender":
        """Convert a dense contender's weights (and, at call time, its input) to ``memory_format``."""
        if self.kind == "sparse":
            return self
        self.encoder.to(memory_format=_torch_format(memory_format))
        self.memory_format = memory_format
        return self

    def format_input(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "sparse":
            return images
        return images.contiguous(memory_format=_torch_format(self.memory_format))


def _torch_format(name: str) -> torch.memory_format:
    return {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[name]


def create_model(name: str, device: torch.device) -> nn.Module:
    """A randomly initialised timm model (nothing is downloaded), in train mode as in pre-training."""
    import timm
    return timm.create_model(name, pretrained=False).to(device).train()


def build_contenders(model: nn.Module, backends: List[str]) -> List[Contender]:
    """Every contender from ``model``'s weights. Raises what sparsify raises for a model it cannot take."""
    contenders = [Contender(f"sparse[{b}]", "sparse", ss.sparsify(model, backend=b), backend=b,
                            memory_format=SPARSE_FORMAT) for b in backends]
    contenders.append(Contender("masked-dense", "masked_dense", ss.MaskedDenseEncoder(model)))
    contenders.append(Contender("dense", "dense", DenseEncoder(model)))
    return contenders


def make_inputs(batch: int, image_size: Tuple[int, int], mask_ratio: float, seed: int,
                device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images and a SparK mask, reproducible from ``seed`` (the memory child process rebuilds them)."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    images = torch.randn(batch, 3, h, w, generator=g)
    visible = ss.random_visible(batch, patch_grid(h, w, PATCH_SIZE), mask_ratio, generator=g)
    return images.to(device), visible.to(device)


class Call:
    """One contender in one mode: ``reset()`` (untimed) before each timed call."""

    def __init__(self, run: Callable[[], object], reset: Callable[[], None] = lambda: None):
        self.run = run
        self.reset = reset

    def __call__(self):
        return self.run()


def encoder_call(contender: Contender, mode: str, images: torch.Tensor, visible: torch.Tensor,
                 amp_dtype: torch.dtype) -> Call:
    """'fwd': forward without autograd; 'fwd_bwd': forward, then backward of a scalar of every stage.

    Both in train mode (BN batch statistics, as in pre-training). The sparse contender returns the
    contract's dense stage maps, so its scatter to dense is paid here too.
    """
    enc = contender.encoder
    x = contender.format_input(images)
    device = images.device
    if mode == "fwd":
        def run():
            with torch.no_grad(), autocast(device, amp_dtype):
                enc(x, visible)
        return Call(run)
    if mode == "fwd_bwd":
        def run():
            with autocast(device, amp_dtype):
                outs = enc(x, visible)
            sum(o.float().mean() for o in outs).backward()
        return Call(run, reset=lambda: enc.zero_grad(set_to_none=True))
    raise ValueError(f"encoder_call handles 'fwd' and 'fwd_bwd', not {mode!r} (the step is in step.py)")


def choose_dense_format(contender: Contender, images: torch.Tensor, visible: torch.Tensor,
                        amp_dtype: torch.dtype, mode: str, requested: str, trials: int = 2) -> str:
    """Set a dense contender to ``requested`` format, or for 'auto' to whichever of contiguous and
    channels-last runs ``mode`` faster here: the two alternate (a first untimed round, then the
    best of ``trials`` calls each), so drift of the machine hits both alike."""
    from .timing import timed
    if contender.kind == "sparse":
        return contender.memory_format
    if requested != "auto":
        contender.set_format(requested)
        return requested
    best = {}
    for trial in range(trials + 1):
        for fmt in ("contiguous", "channels_last"):
            contender.set_format(fmt)
            seconds = timed(encoder_call(contender, mode, images, visible, amp_dtype), images.device)
            if trial > 0:
                best[fmt] = min(best.get(fmt, seconds), seconds)
    contender.encoder.zero_grad(set_to_none=True)
    return contender.set_format(min(best, key=best.get)).memory_format
