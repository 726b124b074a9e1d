"""SparK's upsampling followed by the first 3×3 conv of its block, as one 3×3 conv at the input's
resolution: the same function with 9 instead of 13 multiply-adds per output pixel and channel².

In SparK's decoder block, ConvTranspose2d(k4, s2, p1) is followed directly by Conv2d(3×3, p1, no
bias), with nothing between them: two linear maps. Each output pixel of the pair, in each of its
four phases (row and column parity), reads a 3×3 window of the input, so the pair is one 3×3 conv
from C_in to 4·C_out channels on the input (weights: products of the two kernels, one matrix
product) followed by interleaving the four phases into the 2× map. The conv's zero padding of the
upsampled map, which the composed kernel does not see, is restored by subtracting, on the output's
border rows and columns, what the composition read from beyond the map (thin strips; the corners
added back once). Gradients flow to the two original weights through autograd, so parameters,
state dicts and SparK's checkpoints are unchanged; the upsampled map itself is never stored.

The composition costs 144·C³ multiply-adds per step and direction, independent of the batch; the
saving is 4·C² per output pixel, so it pays where batch × input positions is large against C
(``composition_pays``). Measured on this project's 2-core CPU at batch 16, forward + backward of
the pair against torch's two layers: at 224² in fp32, 747 → 576, 865 → 562 and 885 → 607 ms at 192,
96 and 48 channels (the decoder's last three blocks), but 690 → 1116 ms at 384 channels on 14×14;
at 96² in bf16, 86 → 91 and 84 → 74 ms at 96 and 48 channels. It sums in another order: fp32
results differ from the two convolutions' by rounding (fp64: 1e-12).

In the decoder block the BatchNorm and the ReLU6 after the pair come along: the BatchNorm normalises
the four phase maps as they are (each channel's statistics are over the same values in another
order, ``phase_batch_norm``) and the ReLU6's clamp writes the interleaved 2× map (``interleave``
with ``relu6``), so the interleaving copy and the clamp are one pass in each direction (the last
block at 224², fp32, batch 16: forward + backward 1502 → 1422 ms).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F

from .upsample import convolution_output_channels_last

# batch × input positions per output channel above which the composition pays (see the docstring;
# the break-even is 9 without the interleaving copy and the border strips)
COMPOSITION_MIN_POSITIONS_PER_CHANNEL = 36


def composition_pays(batch: int, channels: int, height: int, width: int) -> bool:
    return batch * height * width >= COMPOSITION_MIN_POSITIONS_PER_CHANNEL * channels


@lru_cache(maxsize=None)
def _tap_selection(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """S[a, e, t, k] = 1 where output phase a (0/1), input offset e (-1/0/1, stored +1) and 3×3 tap
    t meet the transposed conv's kernel index k = a + t - 2e (one dimension). Built once per device
    and dtype (read-only)."""
    s = torch.zeros(2, 3, 3, 4, device=device, dtype=dtype)
    for a in range(2):
        for e in range(3):
            for t in range(3):
                k = a + t - 2 * (e - 1)
                if 0 <= k < 4:
                    s[a, e, t, k] = 1
    return s


def composed_weight(up_weight: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """(4·C_out, C_in, 3, 3): the pair's kernel, output channels ordered (row phase, column phase,
    C_out). ``up_weight`` (C_in, C_mid, 4, 4), ``conv_weight`` (C_out, C_mid, 3, 3)."""
    c_in, c_mid = up_weight.shape[:2]
    c_out = conv_weight.shape[0]
    # every (tap, kernel index) product of the two kernels over the middle channels: one GEMM
    products = (conv_weight.permute(0, 2, 3, 1).reshape(c_out * 9, c_mid)
                @ up_weight.transpose(0, 1).reshape(c_mid, c_in * 16)).view(c_out, 3, 3, c_in, 4, 4)
    s = _tap_selection(up_weight.device, up_weight.dtype)
    rows = torch.einsum("aetk,qtsckl->aeqscl", s, products)          # rows: phase a, offset e
    kernel = torch.einsum("bfsl,aeqscl->abqcef", s, rows)            # columns: phase b, offset f
    return kernel.reshape(4 * c_out, c_in, 3, 3)


def _outside_strip(x_line: torch.Tensor, up_weight: torch.Tensor, up_bias: torch.Tensor,
                   conv_taps: torch.Tensor, up_index: int) -> torch.Tensor:
    """What the composition read from the upsampled map's row just outside it, times the conv's
    taps that reach it: ``x_line`` (B, C_in, 1, W) is the input row that row came from, ``up_index``
    the transposed conv's kernel row that made it, ``conv_taps`` (C_out, C_mid, 1, 3). Returns
    (B, C_out, 1, 2W)."""
    outside = F.conv_transpose2d(x_line, up_weight[:, :, up_index:up_index + 1, :], up_bias, stride=(1, 2))
    return F.conv2d(outside, conv_taps)  # the row at columns -1 … 2W: 2W + 2 wide, valid → 2W


def composed_phases(x: torch.Tensor, up_weight: torch.Tensor, up_bias: Optional[torch.Tensor],
                    conv_weight: torch.Tensor) -> torch.Tensor:
    """The pair's output as its four phase maps (B, 4·C_out, H, W), channels ordered (row phase,
    column phase, C_out), in the memory format of ``x``: :func:`interleave` makes the 2× map."""
    n, c_in, h, w = x.shape
    c_mid = up_weight.shape[1]
    bias = up_bias if up_bias is not None else up_weight.new_zeros(c_mid)
    with torch.autocast(x.device.type, enabled=False):  # the kernel in the weights' own precision
        kernel = composed_weight(up_weight, conv_weight)
        interior_bias = torch.einsum("qmts,m->q", conv_weight, bias).repeat(4)
    phases = F.conv2d(x, kernel, interior_bias, padding=1)                       # (B, 4·C_out, H, W)
    # the conv's zero padding of the upsampled map: remove what the composition read beyond it
    first_row, last_row, first_col, last_col = _Borders.apply(x)  # columns as (B, C, 1, H) rows
    wt, vt = up_weight.transpose(2, 3), conv_weight.transpose(2, 3)
    top = _outside_strip(first_row, up_weight, bias, conv_weight[:, :, :1], 0)
    bottom = _outside_strip(last_row, up_weight, bias, conv_weight[:, :, 2:], 3)
    left = _outside_strip(first_col, wt, bias, vt[:, :, :1], 0).transpose(2, 3)
    right = _outside_strip(last_col, wt, bias, vt[:, :, 2:], 3).transpose(2, 3)
    corners = _corners(first_row, last_row, up_weight, bias, conv_weight)
    return _FixBorders.apply(phases, top, bottom, left, right, *corners)


def interleave(phases: torch.Tensor, channels_last: bool, relu6: bool = False) -> torch.Tensor:
    """The four phase maps (B, 4·C, H, W) as the 2× map (B, C, 2H, 2W) in the given memory format;
    with ``relu6`` clamped to [0, 6] on the way (SparK's ReLU6, in the same pass as the copy)."""
    return _Interleave.apply(phases, channels_last, relu6)


def phase_batch_norm(norm: torch.nn.Module, phases: torch.Tensor) -> torch.Tensor:
    """``norm`` (a BatchNorm of C channels, any kind) applied to the 2× map that ``phases``
    (B, 4·C, H, W) interleave to, computed on the phases themselves: each channel's statistics are
    over the same values, only visited in another order. Returns phases again."""
    n, c4, h, w = phases.shape
    c = c4 // 4
    if phases.is_contiguous(memory_format=torch.channels_last):
        # every (image, row, column, phase) a row of C values: one channels-last (1, C, rows, 1) map
        rows = phases.permute(0, 2, 3, 1).reshape(1, n * h * w * 4, c).permute(0, 2, 1).unsqueeze(3)
        out = norm(rows)
        return out.squeeze(3).permute(0, 2, 1).reshape(n, h, w, c4).permute(0, 3, 1, 2)
    return norm(phases.reshape(n * 4, c, h, w)).reshape(n, c4, h, w)


def upsample_conv(x: torch.Tensor, up_weight: torch.Tensor, up_bias: Optional[torch.Tensor],
                  conv_weight: torch.Tensor) -> torch.Tensor:
    """conv2d(conv_transpose2d(x, up_weight, up_bias, stride 2, padding 1), conv_weight, padding 1),
    in the memory format torch's two convolutions would give."""
    phases = composed_phases(x, up_weight, up_bias, conv_weight)
    return interleave(phases, convolution_output_channels_last(x, conv_weight))


def _phase_view(t: torch.Tensor) -> torch.Tensor:
    """(B, 4·C, H, W) phases as (B, C, H, 2, W, 2): indexed like the 2× map's (B, C, H, 2, W, 2) view."""
    n, c4, h, w = t.shape
    return t.unflatten(1, (2, 2, c4 // 4)).permute(0, 3, 4, 1, 5, 2)


class _Interleave(torch.autograd.Function):
    """Phases → 2× map, one copy each way (optionally through ReLU6's clamp and its gradient)."""

    @staticmethod
    def forward(ctx, phases, channels_last: bool, relu6: bool):
        n, c4, h, w = phases.shape
        c = c4 // 4
        out = torch.empty((n, c, 2 * h, 2 * w), dtype=phases.dtype, device=phases.device,
                          memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        target = out.view(n, c, h, 2, w, 2)
        if relu6:
            torch.clamp(_phase_view(phases), 0.0, 6.0, out=target)
            ctx.save_for_backward(out)
        else:
            target.copy_(_phase_view(phases))
        ctx.relu6, ctx.phases_channels_last = relu6, phases.is_contiguous(memory_format=torch.channels_last)
        return out

    @staticmethod
    def backward(ctx, grad):
        n, c, h2, w2 = grad.shape
        h, w = h2 // 2, w2 // 2
        grad_phases = torch.empty((n, 4 * c, h, w), dtype=grad.dtype, device=grad.device,
                                  memory_format=torch.channels_last if ctx.phases_channels_last
                                  else torch.contiguous_format)
        source = grad.reshape(n, c, h, 2, w, 2)
        if ctx.relu6:
            (out,) = ctx.saved_tensors
            # 0 < clamped < 6 exactly where 0 < input < 6: torch's own derivative of ReLU6
            torch.ops.aten.hardtanh_backward.grad_input(source, out.view(n, c, h, 2, w, 2), 0.0, 6.0,
                                                        grad_input=_phase_view(grad_phases))
        else:
            _phase_view(grad_phases).copy_(source)
        return grad_phases, None, None


class _FixBorders(torch.autograd.Function):
    """Subtract the four border strips from the phases (in place, in the 2× map's coordinates) and
    add back the four corners; the gradient passes through and is read off for the strips."""

    @staticmethod
    def forward(ctx, phases, *parts):  # top, bottom, left, right, then the four corners
        ctx.parts = [(t.shape, t.dtype) for t in parts]
        view = _phase_view(phases)
        for region, sign, part in zip(_STRIPS + _CORNERS, (-1,) * 4 + (1,) * 4, parts):
            view[region].add_(part.reshape(view[region].shape), alpha=sign)
        ctx.mark_dirty(phases)
        return phases

    @staticmethod
    def backward(ctx, grad):
        view = _phase_view(grad)
        signs = (-1,) * 4 + (1,) * 4
        return (grad, *[(sign * view[region]).reshape(shape).to(dtype)
                        for region, sign, (shape, dtype) in zip(_STRIPS + _CORNERS, signs, ctx.parts)])


_ALL = slice(None)
# the 2× map's border rows and columns in its (B, C, H, 2, W, 2) view: first row = (h 0, row phase 0),
# last row = (h H-1, row phase 1), first column = (w 0, column phase 0), last column = (w W-1, phase 1)
_FIRST, _LAST = (0, 0), (-1, 1)
_STRIPS = tuple((_ALL, _ALL, *idx, _ALL, _ALL) for idx in (_FIRST, _LAST)) + \
    tuple((_ALL, _ALL, _ALL, _ALL, *idx) for idx in (_FIRST, _LAST))
_CORNERS = tuple((_ALL, _ALL, *r, *c) for r in (_FIRST, _LAST) for c in (_FIRST, _LAST))


class _Borders(torch.autograd.Function):
    """x's first and last rows (B, C, 1, W) and columns (as rows, (B, C, 1, H)), contiguous; the
    backward writes their gradients into one zero map (slicing x four times would allocate four)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape, ctx.dtype = x.shape, x.dtype
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return (x[:, :, :1].contiguous(), x[:, :, -1:].contiguous(),
                x[:, :, :, :1].transpose(2, 3).contiguous(), x[:, :, :, -1:].transpose(2, 3).contiguous())

    @staticmethod
    def backward(ctx, first_row, last_row, first_col, last_col):
        grad = torch.empty(ctx.shape, dtype=ctx.dtype, device=first_row.device,
                           memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format).zero_()
        for region, part in ((grad[:, :, :1], first_row), (grad[:, :, -1:], last_row),
                             (grad[:, :, :, :1], first_col), (grad[:, :, :, -1:], last_col)):
            if part is not None:  # (adds, as a row and a column share their corner)
                region.add_(part if region.shape == part.shape else part.transpose(2, 3))
        return grad


def _corners(first_row: torch.Tensor, last_row: torch.Tensor, up_weight: torch.Tensor, bias: torch.Tensor,
             conv_weight: torch.Tensor):
    """The four values outside both a border row and a border column (e.g. row -1, column -1), which
    the row and the column strips both removed: (B, C_out, 1, 1) each, top-left, top-right,
    bottom-left, bottom-right."""
    out = []
    for row, k_row, t_row in ((first_row, 0, 0), (last_row, 3, 2)):
        for col, k_col, t_col in ((0, 0, 0), (-1, 3, 2)):
            outside = row[:, :, 0, col] @ up_weight[:, :, k_row, k_col] + bias          # (B, C_mid)
            out.append((outside @ conv_weight[:, :, t_row, t_col].t())[:, :, None, None])
    return out
