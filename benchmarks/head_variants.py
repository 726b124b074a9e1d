"""The dense head's exact alternatives, side by side: speed and fp32 error against fp64.

- The decoder's ConvTranspose2d(k4, s2, p1) four ways that compute the same function: torch's own
  transposed convolution; the same forward with the backward through ordinary convolutions (what the
  decoder runs, spark_sparse/upsample.py); four phase convolutions (each output pixel parity is a 2×2 convolution
  of the input: the same 16 taps per input pixel); one sub-pixel 3×3 convolution to 4× the
  channels (zero taps where a phase has none: 36 taps) followed by a pixel shuffle.
- The whole LightDecoder NCHW (SparK's code), channels-last with SparK's layers
  (``LightDecoder.set_as_published``), channels-last (ours), channels-last under bf16 autocast, and
  optionally ``torch.compile``-d.

Errors are max |fp32 - fp64| / max |fp64| of the output and of the input gradient, with fp64 run
through torch's own op on the same weights and inputs: a faster form is only worth having if it
rounds no worse.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from spark_sparse.decoder import LightDecoder
from spark_sparse.recipe import DECODER_WIDTH
from spark_sparse.upsample import upsample_2x
from spark_sparse.precision import autocast

from .contenders import Call
from .timing import median_ms, time_interleaved

# ConvTranspose2d(k4, s2, p1): output row 2i + a reads input rows i + d through kernel row k
TAPS = {0: {-1: 3, 0: 1}, 1: {0: 2, 1: 0}}  # parity a → {input offset d: kernel index k}


def upsample_native(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return F.conv_transpose2d(x, weight, bias, stride=2, padding=1)


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_in, C_out, 4, 4) transposed-conv weight → (4·C_out, C_in, 3, 3) conv weight, pixel-shuffle order."""
    c_in, c_out = weight.shape[:2]
    k = weight.new_zeros(c_out, 2, 2, c_in, 3, 3)
    for a, rows in TAPS.items():
        for b, cols in TAPS.items():
            for dy, ky in rows.items():
                for dx, kx in cols.items():
                    k[:, a, b, :, dy + 1, dx + 1] = weight[:, :, ky, kx].t()
    return k.reshape(4 * c_out, c_in, 3, 3)


def upsample_subpixel(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    y = F.conv2d(x, subpixel_weight(weight), None if bias is None else bias.repeat_interleave(4), padding=1)
    return F.pixel_shuffle(y, 2)


def upsample_phases(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    rows = []
    for a, dys in TAPS.items():
        cols = []
        for b, dxs in TAPS.items():
            k = torch.stack([torch.stack([weight[:, :, dys[dy], dxs[dx]] for dx in sorted(dxs)], -1)
                             for dy in sorted(dys)], -2).transpose(0, 1)
            pad = (1 - b, b, 1 - a, a)  # left, right, top, bottom
            cols.append(F.conv2d(F.pad(x, pad), k, bias))
        rows.append(torch.stack(cols, -1))
    y = torch.stack(rows, -3)  # (N, C, H, a, W, b)
    n, c, h, _, w, _ = y.shape
    return y.reshape(n, c, 2 * h, 2 * w)


UPSAMPLERS: Dict[str, Callable] = {"native": upsample_native, "conv-backward": upsample_2x, "phases": upsample_phases,
                                   "subpixel": upsample_subpixel}


def rel_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return float((value.double() - truth).abs().max() / truth.abs().max().clamp_min(1e-30))


_COTANGENTS: Dict[tuple, torch.Tensor] = {}


def _backward(y: torch.Tensor) -> None:
    """Backward of a fixed random cotangent (a plain sum would give BatchNorm'd outputs a zero gradient),
    drawn once per shape and dtype so that drawing it is not part of the time."""
    key = (tuple(y.shape), y.dtype if y.dtype == torch.float64 else torch.float32)
    if key not in _COTANGENTS:
        cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        _COTANGENTS[key] = cotangent.to(key[1])
    if y.dtype == torch.float64:
        y.backward(_COTANGENTS[key])
    else:
        y.float().backward(_COTANGENTS[key])


def _fwd_bwd(fn, x: torch.Tensor, *params: torch.Tensor):
    x = x.detach().requires_grad_()
    y = fn(x, *params)
    _backward(y)
    return y.detach(), x.grad


def measure_upsampling(batch: int, image_size: Tuple[int, int], width: int, memory_format: torch.memory_format,
                       warmup: int, repeats: int, seed: int = 0) -> List[dict]:
    """Every decoder upsampling layer's shape: fwd+bwd median ms and fp32 error of each variant."""
    decoder = LightDecoder(width=width)
    g = torch.Generator().manual_seed(seed)
    rows = []
    h, w = image_size[0] // 32, image_size[1] // 32
    for i, block in enumerate(decoder.dec):
        weight, bias = block.up_sample.weight.detach(), block.up_sample.bias.detach()
        x = torch.randn(batch, weight.shape[0], h * 2 ** i, w * 2 ** i, generator=g)
        truth, truth_grad = _fwd_bwd(upsample_native, x.double(), weight.double(), bias.double())
        xf = x.contiguous(memory_format=memory_format)
        wf = weight.contiguous(memory_format=memory_format).requires_grad_()
        bf = bias.clone().requires_grad_()
        row = {"layer": f"dec.{i}.up_sample", "channels": weight.shape[0], "input_hw": list(x.shape[-2:]),
               "error": {}, "grad_error": {}}
        for name, fn in UPSAMPLERS.items():
            y, gx = _fwd_bwd(fn, xf, wf, bf)
            row["error"][name], row["grad_error"][name] = rel_error(y, truth), rel_error(gx, truth_grad)
        calls = {name: Call(lambda fn=fn: _fwd_bwd(fn, xf, wf, bf)) for name, fn in UPSAMPLERS.items()}
        times, _ = time_interleaved(calls, warmup=warmup, repeats=repeats, device=torch.device("cpu"))
        row["time_ms"] = {n: median_ms(t) for n, t in times.items()}
        rows.append(row)
    return rows


def measure_decoder(batch: int, image_size: Tuple[int, int], width: int, warmup: int, repeats: int,
                    compile_head: bool = False, seed: int = 0) -> List[dict]:
    """The whole LightDecoder, fwd+bwd, in each way it can run: median ms and fp32 error vs fp64."""
    torch.manual_seed(seed)
    base = LightDecoder(width=width).train()
    g = torch.Generator().manual_seed(seed)
    h, w = image_size[0] // 32, image_size[1] // 32
    maps = [torch.randn(batch, c, h * 2 ** i, w * 2 ** i, generator=g) for i, c in enumerate(base.widths[:4])]

    def run(decoder, inputs, amp=torch.float32):
        inputs = [m.detach().requires_grad_() for m in inputs]
        with autocast(torch.device("cpu"), amp):
            y = decoder(inputs)
        _backward(y)
        return y.detach(), inputs[-1].grad

    truth = run(copy.deepcopy(base).double(), [m.double() for m in maps])
    # name: (memory format, autocast dtype, torch.compile, every layer as SparK's code runs it)
    variants = {"NCHW fp32 (SparK's)": (torch.contiguous_format, torch.float32, False, True),
                "channels-last fp32, SparK's layers": (torch.channels_last, torch.float32, False,
                                                                         True),
                "channels-last fp32": (torch.channels_last, torch.float32, False, False),
                "channels-last bf16 autocast": (torch.channels_last, torch.bfloat16, False, False)}
    if compile_head:
        variants["channels-last fp32 torch.compile"] = (torch.channels_last, torch.float32, True, False)
    rows, calls = [], {}
    for name, (fmt, amp, compiled, as_published) in variants.items():
        decoder = copy.deepcopy(base).to(memory_format=fmt)
        decoder.set_as_published(as_published)
        inputs = [m.contiguous(memory_format=fmt) for m in maps]
        row = {"variant": name}
        if compiled:
            start = time.perf_counter()
            decoder = torch.compile(decoder)
            run(decoder, inputs)
            row["compile_s"] = time.perf_counter() - start
        y, gx = run(decoder, inputs, amp)
        row["error"], row["grad_error"] = rel_error(y, truth[0]), rel_error(gx, truth[1])
        calls[name] = Call(lambda d=decoder, i=inputs, a=amp: run(d, i, a),
                           reset=lambda d=decoder: d.zero_grad(set_to_none=True))
        rows.append(row)
    times, errors = time_interleaved(calls, warmup=warmup, repeats=repeats, device=torch.device("cpu"))
    for row in rows:
        t = times.get(row["variant"])
        row["time_ms"] = median_ms(t) if t else None
        if row["variant"] in errors:
            row["failed"] = errors[row["variant"]]
    return rows


def measure(batch: int, image_size: Tuple[int, int], width: int = DECODER_WIDTH, warmup: int = 1, repeats: int = 3,
            compile_head: bool = False) -> dict:
    return {"batch": batch, "image_size": list(image_size), "width": width, "repeats": repeats,
            "upsampling": {fmt: measure_upsampling(batch, image_size, width, f, warmup, repeats)
                           for fmt, f in (("channels_last", torch.channels_last),
                                          ("contiguous", torch.contiguous_format))},
            "decoder": measure_decoder(batch, image_size, width, warmup, repeats, compile_head)}
