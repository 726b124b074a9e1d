"""The dense depthwise k×k convolution with a fast weight gradient on the CPU.

torch's depthwise weight gradient on the CPU takes 7–80× as long as its forward (ConvNeXt's 7×7,
batch 16, 2 threads, channels-last: 9.9 ms against 1.1 ms forward at 384 channels on 14×14, and
21–70 ms in bf16), and it was most of the sparse ConvNeXt encoder's backward. The same numbers come
from one *forward* depthwise conv with the roles swapped: every (image, channel) pair is a group,
the input is that image's channel map, the "kernel" is its output gradient (the map's size), the
output is the k×k weight gradient of that pair, and a sum over the images finishes it:

    dW[c, i, j] = Σ_b Σ_{h,w} x_pad[b, c, h+i, w+j] · dy[b, c, h, w]

Measured on this project's 2-core CPU (fp32 / bf16, ms, torch's gradient → this one): 56×56×96
41 → 26 / 70 → 19; 28×28×192 18 → 12 / 33 → 6; 14×14×384 10 → 4.4 / 21 → 2.9; 7×7×768 8.3 → 2.1 /
21 → 1.7; halo tiles 14×38×96 16 → 5.7 / 22 → 3.4, the smallest ones (10×10×192, stride 8)
6.8 → 5.7 / 14 → 3.7. Against fp64, its fp32 error was no larger than torch's in every case
measured; in bf16 each image's part is rounded before the sum over images, and its error was
about 1.3× torch's (tests/test_depthwise_conv.py bounds both). The input gradient stays torch's
(it is a forward-sized conv already).

On other devices (and for strides or dilations the swap does not cover) the convolution is
``F.conv2d`` and its backward torch's own.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def swapped_roles_apply(x: torch.Tensor, weight: torch.Tensor, dilation: Tuple[int, int]) -> bool:
    """Whether the weight gradient runs as the role-swapped forward conv: on the CPU, dilation 1
    (the depthwise layers the sparse encoder runs are stride 1), input and weight in one dtype."""
    return (x.device.type == "cpu" and tuple(dilation) == (1, 1) and weight.requires_grad
            and x.dtype == weight.dtype)


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: Tuple[int, int],
                          padding: Tuple[int, int]) -> torch.Tensor:
    """(C, 1, kh, kw) weight gradient of a stride-1, dilation-1 depthwise conv of ``x`` (B, C, H, W)
    whose output gradient is ``grad_out``, as one forward depthwise conv with B·C groups."""
    b, c, h, w = x.shape
    ho, wo = grad_out.shape[2:]
    if x.numel() == 0 or grad_out.numel() == 0:  # no images (e.g. no visible tile of a shape): no gradient
        return x.new_zeros(c, 1, *kernel)
    # channels-last (1, B·C, H, W): group b·C + c is image b's channel c (oneDNN's fast layout)
    maps = x.permute(2, 3, 0, 1).reshape(1, h, w, b * c).permute(0, 3, 1, 2)
    kernels = grad_out.reshape(b * c, 1, ho, wo)
    per_image = F.conv2d(maps, kernels, None, 1, padding, 1, b * c)
    return per_image.reshape(b, c, *kernel).sum(0).unsqueeze(1)


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        with torch.autocast(x.device.type, enabled=False):  # the caller chose the dtype; backward uses it too
            return F.conv2d(x, weight, None, 1, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], weight.shape[0],
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, tuple(weight.shape[2:]), ctx.padding)
        return grad_x, grad_w, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, padding: Tuple[int, int],
                     dilation: Tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Stride-1 depthwise conv of ``x`` (B, C, H, W) with ``weight`` (C, 1, kh, kw), no bias: the
    same numbers as ``F.conv2d(x, weight, None, 1, padding, dilation, C)``, with the fast weight
    gradient where :func:`swapped_roles_apply`."""
    padding, dilation = tuple(padding), tuple(dilation)
    if not swapped_roles_apply(x, weight, dilation):
        return F.conv2d(x, weight, None, 1, padding, dilation, weight.shape[0])
    return _DepthwiseConv2d.apply(x, weight, padding)
