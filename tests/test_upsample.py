"""The decoder's upsampling layer: its backward, through ordinary convolutions or through im2col and
matrix products, is torch's transposed convolution's, in fp64 (output, input gradient, weight and
bias gradients), under bf16 autocast, in either memory format, and when only some inputs need a
gradient."""
import pytest
import torch
import torch.nn.functional as F

from spark_sparse import upsample
from spark_sparse.decoder import LightDecoder
from spark_sparse.upsample import Upsample2x, gemm_backward_pays, gemm_forward_pays
from tests.equivalence import rel_max


def _pair(channels, dtype=torch.float64, memory_format=torch.contiguous_format):
    torch.manual_seed(0)
    ours = Upsample2x(channels).to(dtype).to(memory_format=memory_format)
    with torch.no_grad():
        ours.bias.normal_()
    theirs = torch.nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1).to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _grads(module, x, cotangent):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(cotangent.to(y.dtype))
    return y.detach(), x.grad, module.weight.grad, module.bias.grad


@pytest.fixture(params=["convs", "gemm backward", "gemm both"])
def route(request, monkeypatch):
    """Each way of computing the forward and the backward, forced for every shape."""
    monkeypatch.setattr(upsample, "gemm_backward_pays", lambda *shape: request.param != "convs")
    monkeypatch.setattr(upsample, "gemm_forward_pays", lambda *shape: request.param == "gemm both")
    return request.param


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 3, 1, 1), (3, 4, 8, 2)])
def test_same_function_and_gradients_as_torch_in_fp64(shape, memory_format, route):
    ours, theirs = _pair(shape[1], memory_format=memory_format)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64).contiguous(memory_format=memory_format)
    cotangent = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], generator=g, dtype=torch.float64)
    ours_out, theirs_out = _grads(ours, x, cotangent), _grads(theirs, x, cotangent)
    for a, b in zip(ours_out, theirs_out):
        assert a.shape == b.shape and rel_max(a, b) <= 1e-13
    assert ours_out[0].is_contiguous(memory_format=memory_format)  # the output in the input's layout


def test_gemm_where_measured_faster():
    assert gemm_backward_pays(768, 7, 7) and gemm_backward_pays(768, 3, 3) and gemm_backward_pays(192, 4, 4)
    assert not gemm_backward_pays(384, 7, 7) and not gemm_backward_pays(768, 14, 14)
    assert not gemm_backward_pays(48, 112, 112)
    assert gemm_forward_pays(768, 3, 3) and gemm_forward_pays(512, 4, 4)
    assert not gemm_forward_pays(384, 3, 3) and not gemm_forward_pays(768, 7, 7)


def test_only_the_requested_gradients(route):
    ours, _ = _pair(4)
    ours.weight.requires_grad_(False)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    ours(x).sum().backward()
    assert ours.weight.grad is None and ours.bias.grad is not None and x.grad is not None
    ours.weight.requires_grad_(True)
    y = ours(x.detach())  # no input gradient wanted: only the parameters'
    y.sum().backward()
    assert ours.weight.grad is not None


def test_bf16_autocast_matches_torch_and_keeps_fp32_gradients(route):
    ours, theirs = _pair(8, torch.float32)
    x = torch.randn(2, 8, 6, 6)
    cotangent = torch.randn(2, 8, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = _grads(ours, x, cotangent)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b = _grads(theirs, x, cotangent)
    assert a[0].dtype == b[0].dtype == torch.bfloat16
    assert ours.weight.grad.dtype == torch.float32 and ours.bias.grad.dtype == torch.float32
    for u, v in zip(a, b):  # both round through bf16: the same kernels, at most a few bf16 steps apart
        assert rel_max(u.float(), v.float()) <= 2e-2


def test_published_backward_and_no_grad_use_torchs_own_path():
    ours, theirs = _pair(3)
    ours.backward_as_convs = False
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    cotangent = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    for a, b in zip(_grads(ours, x, cotangent), _grads(theirs, x, cotangent)):
        assert torch.equal(a, b)
    ours.backward_as_convs = True
    with torch.no_grad():  # nothing to differentiate: torch's own forward, bit for bit
        assert torch.equal(ours(x), theirs(x))


def test_decoder_uses_it_and_keeps_sparks_parameter_names():
    decoder = LightDecoder(width=64)
    assert all(isinstance(b.up_sample, Upsample2x) for b in decoder.dec)
    assert "dec.0.up_sample.weight" in decoder.state_dict() and "dec.0.up_sample.bias" in decoder.state_dict()
    x = torch.randn(1, 64, 2, 2, dtype=torch.float64)
    up = decoder.dec[0].up_sample.double()
    ref = F.conv_transpose2d(x, up.weight, up.bias, stride=2, padding=1)
    assert rel_max(up(x), ref) <= 1e-14
