"""The decoder's upsampling and first conv as one composed 3×3 conv: the same function and the same
gradients as torch's two layers (fp64), the borders included; used where it pays, off for SparK as
published."""
import pytest
import torch
import torch.nn.functional as F

from spark_sparse.decoder import LightDecoder, UpsampleBlock
from spark_sparse.upsample import set_backward_as_convs
from spark_sparse import upsample_conv as uc
from tests.equivalence import rel_max


def _two_layers(x, up_weight, up_bias, conv_weight):
    return F.conv2d(F.conv_transpose2d(x, up_weight, up_bias, stride=2, padding=1), conv_weight, padding=1)


@pytest.mark.parametrize("n, c_in, c_mid, c_out, h, w", [(2, 3, 4, 5, 4, 5), (1, 6, 6, 6, 1, 1), (2, 4, 4, 3, 1, 3),
                                                         (3, 5, 5, 5, 3, 2), (2, 8, 8, 8, 7, 7)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
def test_same_function_and_gradients_as_the_two_layers_in_fp64(n, c_in, c_mid, c_out, h, w, memory_format, bias):
    g = torch.Generator().manual_seed(h * 10 + w)
    x = torch.randn(n, c_in, h, w, dtype=torch.float64, generator=g).to(memory_format=memory_format)
    x.requires_grad_()
    up_weight = torch.randn(c_in, c_mid, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    up_bias = torch.randn(c_mid, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    conv_weight = torch.randn(c_out, c_mid, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    inputs = [t for t in (x, up_weight, up_bias, conv_weight) if t is not None]
    ref = _two_layers(x, up_weight, up_bias, conv_weight)
    out = uc.upsample_conv(x, up_weight, up_bias, conv_weight)
    assert out.shape == ref.shape and rel_max(out, ref) <= 1e-12
    assert out.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)
    cotangent = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    expected = torch.autograd.grad(ref, inputs, cotangent)
    got = torch.autograd.grad(out, inputs, cotangent)
    assert all(rel_max(a, b) <= 1e-12 for a, b in zip(got, expected))


def test_bf16_autocast_is_as_close_to_the_fp64_truth_as_the_two_layers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 8, 8, generator=g).to(memory_format=torch.channels_last)
    up_weight, up_bias = torch.randn(16, 16, 4, 4, generator=g) * 0.1, torch.randn(16, generator=g)
    conv_weight = torch.randn(16, 16, 3, 3, generator=g) * 0.1
    truth = _two_layers(*(t.double() for t in (x, up_weight, up_bias, conv_weight)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = uc.upsample_conv(x, up_weight, up_bias, conv_weight)
        theirs = _two_layers(x, up_weight, up_bias, conv_weight)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert rel_max(ours.double(), truth) <= 2 * max(rel_max(theirs.double(), truth), 1e-2)


def test_the_decoder_composes_its_largest_maps_only():
    """At SparK's widths and batch 16: the blocks upsampling to strides 4, 2 and 1 at 224² (the
    composition's fixed cost is 144·C³, its saving grows with the map), the last two at 96²."""
    widths = LightDecoder(width=768).widths
    sides = {224: [7, 14, 28, 56, 112], 96: [3, 6, 12, 24, 48]}
    chosen = {size: [i for i, (c, s) in enumerate(zip(widths, sides[size])) if uc.composition_pays(16, c, s, s)]
              for size in sides}
    assert chosen == {224: [2, 3, 4], 96: [3, 4]}


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("train", [True, False])
def test_a_composing_block_computes_the_two_layers_block_in_fp64(train, fmt):
    """The whole block (BatchNorms in training mode too): output, every parameter gradient, the input
    gradient and the running statistics as with torch's two layers (SparK as published)."""
    torch.manual_seed(0)
    ours = UpsampleBlock(8, 4).double().to(memory_format=fmt).train(train)
    theirs = UpsampleBlock(8, 4).double().to(memory_format=fmt).train(train)
    theirs.load_state_dict(ours.state_dict())
    theirs.as_published = True
    set_backward_as_convs(theirs, False)  # torch's transposed conv, as SparK's block has it
    x = torch.randn(2, 8, 12, 13, dtype=torch.float64).to(memory_format=fmt).requires_grad_()
    assert ours.composes(x) and not theirs.composes(x)
    a, b = ours(x), theirs(x)
    assert rel_max(a, b) <= 1e-12
    cotangent = torch.randn_like(b)
    ga = torch.autograd.grad(a, [x, *ours.parameters()], cotangent)
    gb = torch.autograd.grad(b, [x, *theirs.parameters()], cotangent)
    assert all(rel_max(p, q) <= 1e-12 for p, q in zip(ga, gb))
    for (name, u), (_, v) in zip(ours.named_buffers(), theirs.named_buffers()):
        assert torch.equal(u, v) if not u.is_floating_point() else rel_max(u, v) <= 1e-12, name


def test_small_maps_keep_the_two_layers(monkeypatch):
    block = UpsampleBlock(64, 32)
    assert not block.composes(torch.randn(1, 64, 2, 2))  # 4 positions for 64 channels: does not pay
    called = []
    monkeypatch.setattr("spark_sparse.decoder.composed_phases", lambda *a: called.append(1))
    with torch.no_grad():
        block(torch.randn(1, 64, 2, 2))
    assert called == []
