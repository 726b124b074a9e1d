"""The decoder's 2× upsampling, ConvTranspose2d(k4, s2, p1), computed faster on the CPU.

A transposed convolution is the adjoint of a strided convolution, so its two gradients are ordinary
convolution work: the input gradient is ``conv2d(grad, W, stride 2, padding 1)`` and the weight
gradient is that convolution's weight gradient with the roles of input and output swapped. Run that
way, oneDNN uses its convolution kernels instead of its slower deconvolution-backward ones: decoder
upsampling layers at batch 16, 224², 2 CPU threads, fp32 forward+backward 1.84 s → 1.61 s, under
bf16 autocast 1.12 s → 0.82 s (most at the wide, shallow layers), with bit-identical results on
this machine. The parameters and their names are torch's own, so SparK's checkpoints load unchanged.

Where the input has only a few positions per image (the decoder's first, widest layer: 768 channels
on a 7×7 map at 224², 3×3 at 96²), oneDNN's convolutions are slow at this work (its weight gradient
ran at 45 GMAC/s in fp32), and both gradients run as one im2col of the gradient and two matrix
products instead: measured on this project's 2-core CPU at batch 16, that backward was 1.5–1.8× faster
at 7×7 with 512–1024 channels and 1.5–9× faster at up to 4×4 with 192–1024 channels, in fp32 and
bf16; at 7×7 with fewer than 512 channels, and at 14×14, the convolutions were as fast or faster
(``gemm_backward_pays``). Its im2col holds 4× the gradient, small at these sizes. It sums in
another order, so its fp32 results differ from the convolutions' by rounding only (fp64: 1e-12).
The forward too is slow there at 512 channels and more (oneDNN's transposed convolution took 63 ms
at 768 channels on 2×2 and 74 ms on 3×3 in fp32, where one matrix product and a col2im take 14 and
30 ms; bf16 25 → 7 and 31 → 16 ms); up to 4×4 with at least 512 channels the forward runs that way
when gradients are being recorded (``gemm_forward_pays``; without gradients it stays torch's own).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE, PADDING, KERNEL = 2, 1, 4
GEMM_MAX_POSITIONS = 16          # input positions per image up to which the GEMM backward always pays
GEMM_WIDE_MAX_POSITIONS = 49     # ... and up to which it pays from GEMM_WIDE_MIN_CHANNELS channels
GEMM_WIDE_MIN_CHANNELS = 512


def gemm_backward_pays(channels: int, height: int, width: int) -> bool:
    """Whether the backward runs as im2col + matrix products (see the module docstring)."""
    positions = height * width
    return positions <= GEMM_MAX_POSITIONS or (positions <= GEMM_WIDE_MAX_POSITIONS
                                               and channels >= GEMM_WIDE_MIN_CHANNELS)


def gemm_forward_pays(channels: int, height: int, width: int) -> bool:
    """Whether the forward runs as a matrix product + col2im (see the module docstring)."""
    return height * width <= GEMM_MAX_POSITIONS and channels >= GEMM_WIDE_MIN_CHANNELS


def convolution_output_channels_last(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether torch's convolutions would give their output channels-last: when the input or the
    weight is (a 1×1 map fits both layouts: told apart by the width's stride)."""
    x_channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.stride(3) == x.shape[1]
    weight_channels_last = not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    return x_channels_last or weight_channels_last


def _by_memory_order(weight: torch.Tensor):
    """(whether ``weight`` is channels-last, its (in, out·kh·kw) matrix as a view in memory order):
    columns (out, kh, kw) for a contiguous weight, (kh, kw, out) for a channels-last one."""
    c_in, c_out = weight.shape[:2]
    channels_last = not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    matrix = weight.permute(0, 2, 3, 1) if channels_last else weight
    return channels_last, matrix.reshape(c_in, c_out * KERNEL * KERNEL)


def _gemm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv_transpose2d(x, W, b, stride 2, padding 1) as x's rows · W (each input position's 4×4
    contribution to the output), summed into place by col2im; in the memory format torch's would have."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[1]
    channels_last, matrix = _by_memory_order(weight)
    cols = x.permute(0, 2, 3, 1).reshape(n * h * w, c_in) @ matrix
    if channels_last:  # (kh, kw, out) → (out, kh, kw), as col2im reads its columns
        cols = cols.view(n * h * w, KERNEL, KERNEL, c_out).permute(0, 3, 1, 2)
    cols = cols.reshape(n, h * w, c_out * KERNEL * KERNEL).transpose(1, 2)
    y = F.fold(cols, (STRIDE * h, STRIDE * w), kernel_size=KERNEL, stride=STRIDE, padding=PADDING)
    return (y + bias.view(1, -1, 1, 1)).contiguous(
        memory_format=torch.channels_last if convolution_output_channels_last(x, weight) else torch.contiguous_format)


def _gemm_backward(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, need_x: bool, need_w: bool):
    """Both gradients of y = conv_transpose2d(x, W, stride 2, padding 1) from one im2col of ``grad``:
    each input position's 4×4 window of the (padded) output gradient is a row, so grad_x = rows · Wᵀ
    and grad_W = xᵀ · rows (x and grad_x as channels-last rows). A row's columns follow the weight's
    memory order, (out, kh, kw) or channels-last (kh, kw, out), so the weight is read and its
    gradient written in the parameter's own layout, without copies."""
    n, c_out, h2, w2 = grad.shape
    c_in, h, w = x.shape[1], h2 // STRIDE, w2 // STRIDE
    padded = F.pad(grad.permute(0, 2, 3, 1), (0, 0, PADDING, PADDING, PADDING, PADDING))
    windows = padded.unfold(1, KERNEL, STRIDE).unfold(2, KERNEL, STRIDE)  # n, h, w, out, kh, kw
    channels_last, flat_weight = _by_memory_order(weight)
    if channels_last:
        windows = windows.permute(0, 1, 2, 4, 5, 3)
    rows = windows.reshape(n * h * w, c_out * KERNEL * KERNEL)
    grad_x = grad_w = None
    if need_x:
        grad_x = (rows @ flat_weight.t()).view(n, h, w, c_in).permute(0, 3, 1, 2)
    if need_w:
        grad_w = x.permute(0, 2, 3, 1).reshape(n * h * w, c_in).t() @ rows
        grad_w = (grad_w.view(c_in, KERNEL, KERNEL, c_out).permute(0, 3, 1, 2) if channels_last
                  else grad_w.view_as(weight))
    return grad_x, grad_w


def _conv_backward(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, need_x: bool, need_w: bool):
    """Both gradients as ordinary convolutions: grad_x = conv2d(grad, W, stride 2, padding 1), and
    grad_W is that convolution's weight gradient with x in its output's place."""
    grad_x = F.conv2d(grad, weight, stride=STRIDE, padding=PADDING) if need_x else None
    grad_w = None
    if need_w:
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            x, grad, weight, None, [STRIDE] * 2, [PADDING] * 2, [1, 1], False, [0, 0], 1, [False, True, False])
    return grad_x, grad_w


class _TransposedConvConvBackward(torch.autograd.Function):
    """y = conv_transpose2d(x, W, b, stride 2, padding 1); gradients through ordinary convolutions, or
    both directions through matrix products where the map has only a few positions."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.param_dtype = weight.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(x, weight)
        with torch.autocast(x.device.type, enabled=False):
            if gemm_forward_pays(x.shape[1], x.shape[2], x.shape[3]):
                return _gemm_forward(x, weight, bias)
            return F.conv_transpose2d(x, weight, bias, stride=STRIDE, padding=PADDING)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        by_gemm = gemm_backward_pays(x.shape[1], x.shape[2], x.shape[3])
        grad_x, grad_w = (_gemm_backward if by_gemm else _conv_backward)(x, grad, weight, need_x, need_w)
        if grad_w is not None:
            grad_w = grad_w.to(ctx.param_dtype)
        grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3)).to(ctx.param_dtype)
        return grad_x, grad_w, grad_b


def upsample_2x(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv_transpose2d(x, weight, bias, stride 2, padding 1) with the backward through convolutions."""
    return _TransposedConvConvBackward.apply(x, weight, bias)


class Upsample2x(nn.ConvTranspose2d):
    """ConvTranspose2d(channels, channels, 4, stride 2, padding 1, bias): SparK's decoder upsampling.

    ``backward_as_convs`` (default True) computes the backward with ordinary convolutions on the CPU,
    and at the widest layers forward and backward with matrix products (see the module docstring; on
    GPUs cuDNN's transposed convolution already runs as convolution kernels, and it was not measured
    there, so GPUs keep torch's own); False runs torch's own transposed convolution everywhere, as
    SparK's code does (the benchmark's "SparK as published" contender).
    """

    def __init__(self, channels: int, backward_as_convs: bool = True):
        super().__init__(channels, channels, kernel_size=KERNEL, stride=STRIDE, padding=PADDING, bias=True)
        self.backward_as_convs = backward_as_convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backward_as_convs and torch.is_grad_enabled() and x.device.type == "cpu":
            return upsample_2x(x, self.weight, self.bias)
        return super().forward(x)


def set_backward_as_convs(model: nn.Module, enabled: bool) -> None:
    """Every Upsample2x in ``model``: ours (True) or torch's own transposed conv (False). The whole
    decoder as SparK's code runs it is ``LightDecoder.set_as_published``, which calls this."""
    for m in model.modules():
        if isinstance(m, Upsample2x):
            m.backward_as_convs = enabled
