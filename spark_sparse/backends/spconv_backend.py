"""The ``spconv`` backend: spconv's rulebooks (index pairs), and its kernels on CUDA.

spconv 2.3.8 has pitfalls, each guarded here (tests/test_spconv_guards.py shows each one):
- indices must be int32 and row-major contiguous: it reads raw pointers, and ``nonzero()`` output
  is column-major (silent garbage otherwise) → ``spconv_indices``;
- a strided ``SparseConv2d`` creates outputs around visible patches that SparK never computes →
  ``restrict_pairs`` drops every pair whose output is not an active site of the next stride;
- on the CPU its scatter-add races across OpenMP threads (wrong results with >1 thread) and its
  backward calls ``torch.cuda.current_stream()`` (fails without a GPU) → on the CPU the rulebook
  is turned into our gather tables and computed by the ``torch`` backend;
- no bf16 kernels (its autocast wrapper casts to fp16) → on CUDA it does not run bf16 layers
  (``spconv_unsupported``: the router picks another implementation; on the CPU bf16 goes the
  gather-table way like every dtype);
- no ``groups`` → depthwise convs are not its job (``spconv_unsupported``); 1×1 convs compute a wrong
  reshape (a known spconv defect) → 1×1 convs are their own kind in the router (``matmul`` or
  ``pointwise-conv``, routing/implementations.py), never spconv; no bias on the CPU → the bias is
  added after the conv (``_plus_bias`` in routing/implementations.py), never passed to spconv.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..features import SparseFeatures
from ..geometry import ConvTable, Geometry
from ..spec import ConvSpec, compute_dtype
from .rulebook import table_conv


def _spconv_ops():
    """spconv's ops module and its native algorithm, imported on first use (spconv is optional)."""
    from spconv.pytorch import ops
    from spconv.pytorch.core import ConvAlgo
    return ops, ConvAlgo.Native


def spconv_indices(coords: torch.Tensor) -> torch.Tensor:
    """(N, 3) (b, y, x) coordinates in the layout spconv reads: int32, row-major contiguous."""
    return coords.to(torch.int32).contiguous()


@dataclass(frozen=True)
class SpconvRulebook:
    """spconv's index pairs for one conv geometry, in its native format.

    ``pairs`` is (2, K, M): input rows, output rows; ``counts`` (K,) valid pairs per offset. For a
    submanifold conv spconv stores only the first half of the counts and handles the centre
    offset as the identity; ``subm`` says which format this is.
    """
    pairs: torch.Tensor
    counts: torch.Tensor
    num_out: int
    num_in: int
    subm: bool

    def full_counts(self) -> torch.Tensor:
        counts = self.counts.long().clone()
        if self.subm:
            k = counts.shape[0]
            centre = k // 2
            counts[centre] = self.num_in
            counts[centre + 1:] = counts[:centre].flip(0)
        return counts

    def to_table(self, kernel) -> ConvTable:
        """Our (N_out, K) gather table holding exactly the same pairs."""
        k = self.pairs.shape[1]
        counts = self.full_counts()
        slot = torch.arange(self.pairs.shape[2], device=self.pairs.device).view(1, -1)
        valid = slot < counts.view(-1, 1)
        offsets = torch.arange(k, device=self.pairs.device).view(-1, 1).expand_as(valid)
        gather = torch.full((self.num_out, k), self.num_in, dtype=torch.long, device=self.pairs.device)
        gather[self.pairs[1].long()[valid], offsets[valid]] = self.pairs[0].long()[valid]
        return ConvTable.from_gather(gather, self.num_in, self.num_out, kernel)


def restrict_pairs(pairs: torch.Tensor, counts: torch.Tensor, out_rows: torch.Tensor, num_out: int):
    """Keep the pairs whose output is one of our sites; renumber outputs to our rows.

    ``out_rows[j]`` is our row of spconv's output j, or ``num_out`` for a site SparK never computes.
    """
    k, m = pairs.shape[1:]
    slot = torch.arange(m, device=pairs.device).view(1, -1)
    mapped = out_rows[pairs[1].long().clamp(min=0)]
    keep = (slot < counts.view(-1, 1).long()) & (mapped < num_out)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept pairs first, in order
    new_counts = keep.sum(1)
    filled = slot < new_counts.view(-1, 1)
    p_in = torch.where(filled, pairs[0].long().gather(1, order), -1)
    p_out = torch.where(filled, mapped.gather(1, order), -1)
    return torch.stack([p_in, p_out]).to(torch.int32).contiguous(), new_counts.to(torch.int32)


def build_rulebook(geometry: Geometry, in_stride: int, spec: ConvSpec) -> SpconvRulebook:
    ops, native = _spconv_ops()
    src = geometry.level(in_stride)
    subm = spec.stride == (1, 1)
    out_inds, pairs, counts = ops.get_indice_pairs(
        spconv_indices(src.coords), geometry.batch, [src.height, src.width], native,
        list(spec.kernel), list(spec.stride), list(spec.padding), list(spec.dilation), [0, 0], subm=subm)
    if subm:
        return SpconvRulebook(pairs, counts, src.num_sites, src.num_sites, True)
    dst = geometry.level(in_stride * spec.stride[0])
    o = out_inds.long()
    out_rows = dst.grid[o[:, 0], o[:, 1], o[:, 2]]
    pairs, counts = restrict_pairs(pairs, counts, out_rows, dst.num_sites)
    return SpconvRulebook(pairs, counts, dst.num_sites, src.num_sites, False)


class _SpconvNativeConv(torch.autograd.Function):
    """spconv's own gather-GEMM-scatter kernels (CUDA, fp32/fp16) on a rulebook."""

    @staticmethod
    def forward(ctx, x, filters, rulebook: SpconvRulebook):
        ops, native = _spconv_ops()
        ctx.rulebook = rulebook
        ctx.save_for_backward(x, filters)
        return ops.indice_conv(x, filters, rulebook.pairs, rulebook.counts, rulebook.num_out,
                               False, rulebook.subm, algo=native)

    @staticmethod
    def backward(ctx, grad_out):
        ops, native = _spconv_ops()
        x, filters = ctx.saved_tensors
        rb: SpconvRulebook = ctx.rulebook
        grad_x, grad_f = ops.indice_conv_backward(x, filters, grad_out.contiguous(), rb.pairs, rb.counts,
                                                  False, rb.subm, algo=native)
        return grad_x, grad_f, None


def native_kernels_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether spconv's own kernels are safe here: CUDA, fp32 or fp16 (CPU ones race; no bf16)."""
    return device.type == "cuda" and dtype in (torch.float32, torch.float16)


def spconv_unsupported(spec: ConvSpec, device: torch.device, dtype: torch.dtype):
    """Why spconv cannot run ``spec`` here (None when it can). A bf16 layer on CUDA is refused rather
    than run in spconv's fp16 behind the caller's back; fp64 runs its rulebook on our gather tables."""
    if spec.groups != 1:
        return "spconv has no grouped (depthwise) convolution"
    if spec.kernel == (1, 1):
        return "spconv 2.3 computes 1x1 convolutions wrongly (its output comes back misarranged)"
    if device.type == "cuda" and dtype == torch.bfloat16:
        return "spconv 2.3.8 has no bf16 kernels (its autocast runs fp16)"
    return None


def rulebook(geometry: Geometry, in_stride: int, spec: ConvSpec) -> SpconvRulebook:
    """The (cached) rulebook of this conv geometry."""
    key = ("spconv", in_stride, spec.kernel, spec.stride, spec.padding, spec.dilation)
    return geometry.cached(key, lambda: build_rulebook(geometry, in_stride, spec))


def spconv_conv(x: SparseFeatures, weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """The ``spconv`` backend: (N_out, C_out) outputs at the next stride's active sites, no bias.
    spconv's kernels where :func:`native_kernels_usable`, else its rulebook on our gather tables."""
    geometry, in_stride = x.geometry, x.stride
    book = rulebook(geometry, in_stride, spec)
    dtype = compute_dtype(x.features)
    if native_kernels_usable(x.features.device, dtype):
        filters = weight.to(dtype).permute(0, 2, 3, 1).contiguous()  # spconv's KRSC layout
        with torch.autocast(x.features.device.type, enabled=False):
            return _SpconvNativeConv.apply(x.features.to(dtype).contiguous(), filters, book)
    key = ("spconv-table", in_stride, spec.kernel, spec.stride, spec.padding, spec.dilation)
    table = geometry.cached(key, lambda: book.to_table(spec.kernel))
    return table_conv(x.features, weight, table)
