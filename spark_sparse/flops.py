"""Exact multiply-accumulate counts: sparse encoder on a given mask, dense backbone on a full image.

Convolutions and matmuls only (the set ``torch.utils.flop_counter`` counts), so the two agree
exactly when nothing is masked. A sparse conv is counted as what it computes: every output site
times the full kernel window (masked or border neighbours read zeros, as a dense conv's padding
does), so the count scales exactly with the number of active sites.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers.base import RoutedConv
from .plan import EncoderPlan, in_channels, run_plan


def conv_macs(n_out: int, conv: RoutedConv) -> int:
    s = conv.spec
    return n_out * s.kernel[0] * s.kernel[1] * (s.in_channels // s.groups) * s.out_channels


def sparse_macs(encoder: nn.Module, visible: torch.Tensor) -> Dict[str, object]:
    """MACs of ``encoder`` on ``visible`` (B, h, w): {'total': int, 'layers': {path: int},
    'routes': {path: implementation}} — each conv's count beside the router's choice that computed it.

    Runs one no-grad forward on zero images in eval mode (no running-stat update, no DropPath
    draw) and counts each layer from the number of sites it really produced.
    """
    layers: Dict[str, int] = {}
    routes: Dict[str, str] = {}
    hooks = []

    def count_conv(m: RoutedConv, i, o, path: str) -> None:
        layers[path] = layers.get(path, 0) + conv_macs(o.features.shape[0], m)
        routes[path] = m.route_for(i[0]).implementation

    for path, module in encoder.named_modules():
        if isinstance(module, RoutedConv):  # convs and Linears
            hooks.append(module.register_forward_hook(lambda m, i, o, path=path: count_conv(m, i, o, path)))
    was_training = encoder.training
    patch = encoder.patch_size
    param = next(encoder.parameters())
    if not (isinstance(visible, torch.Tensor) and visible.dim() == 3 and visible.dtype == torch.bool):
        shape = tuple(visible.shape) if isinstance(visible, torch.Tensor) else type(visible).__name__
        raise TypeError(f"visible must be a (B, h, w) bool tensor of visible patches, got {shape}")
    images = torch.zeros(visible.shape[0], encoder.in_channels, visible.shape[1] * patch, visible.shape[2] * patch,
                         device=param.device, dtype=param.dtype)
    try:
        encoder.eval()
        with torch.no_grad():
            encoder.forward_sparse(images, visible.to(param.device))
    finally:
        encoder.train(was_training)
        for h in hooks:
            h.remove()
    return {"total": sum(layers.values()), "layers": layers, "routes": routes}


def dense_macs(model: nn.Module, batch: int, image_size: Tuple[int, int]) -> int:
    """MACs of the dense backbone's encoder part (same layers as the SparseEncoder) on full images."""
    plan = EncoderPlan.from_model(model)
    param = next(model.parameters())
    x = torch.zeros(batch, in_channels(model), *image_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            run_plan(model, plan, x, lambda module, x, path: module(x))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
