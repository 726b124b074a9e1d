"""The decoder's 2× upsampling, ConvTranspose2d(k4, s2, p1), with a faster backward on the CPU.

A transposed convolution is the adjoint of a strided convolution, so its two gradients are ordinary
convolution work: the input gradient is ``conv2d(grad, W, stride 2, padding 1)`` and the weight
gradient is that convolution's weight gradient with the roles of input and output swapped. Run that
way, oneDNN uses its convolution kernels instead of its slower deconvolution-backward ones: decoder
upsampling layers at batch 16, 224², 2 CPU threads, fp32 forward+backward 1.84 s → 1.61 s, under
bf16 autocast 1.12 s → 0.82 s (most at the wide, shallow layers), with bit-identical results on
this machine. The parameters, their names and the forward are torch's own, so SparK's checkpoints
load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE, PADDING, KERNEL = 2, 1, 4


class _TransposedConvConvBackward(torch.autograd.Function):
    """y = conv_transpose2d(x, W, b, stride 2, padding 1); gradients through ordinary convolutions."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.param_dtype = weight.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(x, weight)
        with torch.autocast(x.device.type, enabled=False):
            return F.conv_transpose2d(x, weight, bias, stride=STRIDE, padding=PADDING)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight, stride=STRIDE, padding=PADDING)
        if ctx.needs_input_grad[1]:
            # the conv x = conv2d(grad-shaped input, W): its weight gradient, with x's place taken by x
            _, grad_w, _ = torch.ops.aten.convolution_backward(
                x, grad, weight, None, [STRIDE] * 2, [PADDING] * 2, [1, 1], False, [0, 0], 1, [False, True, False])
            grad_w = grad_w.to(ctx.param_dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3)).to(ctx.param_dtype)
        return grad_x, grad_w, grad_b


def upsample_2x(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv_transpose2d(x, weight, bias, stride 2, padding 1) with the backward through convolutions."""
    return _TransposedConvConvBackward.apply(x, weight, bias)


class Upsample2x(nn.ConvTranspose2d):
    """ConvTranspose2d(channels, channels, 4, stride 2, padding 1, bias): SparK's decoder upsampling.

    ``backward_as_convs`` (default True) computes the backward with ordinary convolutions on the CPU
    (see the module docstring; on GPUs cuDNN's transposed convolution already runs as convolution
    kernels, and it was not measured there, so GPUs keep torch's own); False runs torch's own
    transposed-convolution backward everywhere, as SparK's code does (the benchmark's "SparK as
    published" contender).
    """

    def __init__(self, channels: int, backward_as_convs: bool = True):
        super().__init__(channels, channels, kernel_size=KERNEL, stride=STRIDE, padding=PADDING, bias=True)
        self.backward_as_convs = backward_as_convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backward_as_convs and torch.is_grad_enabled() and x.device.type == "cpu":
            return upsample_2x(x, self.weight, self.bias)
        return super().forward(x)


def set_backward_as_convs(model: nn.Module, enabled: bool) -> None:
    """Every Upsample2x in ``model``: ours (True) or torch's own transposed-conv backward (False)."""
    for m in model.modules():
        if isinstance(m, Upsample2x):
            m.backward_as_convs = enabled
