"""The 1×1 convs' matmul through oneDNN's 1×1 conv is F.linear's function: exact in fp64 (forced route),
within fp32 rounding of the fp64 truth in fp32, with every gradient; the route is taken only where it
is measured faster, and the encoder's pointwise convs take it."""
import pytest
import timm
import torch
import torch.nn.functional as F

import spark_sparse as ss
import spark_sparse.kernels.rows_linear as rl
from spark_sparse.kernels.rows_linear import ROWS_CONV_MIN, conv_route_wins, rows_linear
from tests.equivalence import rel_max


def _grads(fn, rows, weight, bias, cotangent):
    rows, weight = rows.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    y = fn(rows, weight, bias)
    y.backward(cotangent)
    return [y.detach(), rows.grad, weight.grad] + ([] if bias is None else [bias.grad])


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("n", [1, 7, 300])
def test_conv_route_is_the_linear_function_in_fp64(n, with_bias):
    g = torch.Generator().manual_seed(n)
    rows = torch.randn(n, 12, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 12, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64) if with_bias else None
    cotangent = torch.randn(n, 5, generator=g, dtype=torch.float64)
    ours = _grads(lambda *a: rows_linear(*a, as_conv=True), rows, weight, bias, cotangent)
    for a, b in zip(ours, _grads(F.linear, rows, weight, bias, cotangent)):
        assert rel_max(a, b) <= 1e-13
    assert ours[0].is_contiguous() and ours[1].is_contiguous()


def test_conv_route_in_fp32_rounds_like_the_matmul():
    """Each fp32 route against the fp64 truth: the conv's error is of the matmul's order."""
    g = torch.Generator().manual_seed(0)
    rows, weight = torch.randn(ROWS_CONV_MIN, 64, generator=g), torch.randn(96, 64, generator=g)
    bias, cotangent = torch.randn(96, generator=g), torch.randn(ROWS_CONV_MIN, 96, generator=g)
    truth = _grads(F.linear, rows.double(), weight.double(), bias.double(), cotangent.double())
    for as_conv in (True, False):
        got = _grads(lambda *a: rows_linear(*a, as_conv=as_conv), rows, weight, bias, cotangent)
        assert all(rel_max(a.double(), b) <= 1e-5 for a, b in zip(got, truth)), as_conv


def test_route_only_where_measured_faster():
    tall = torch.zeros(ROWS_CONV_MIN, 8)
    assert conv_route_wins(tall)
    assert not conv_route_wins(tall[:ROWS_CONV_MIN - 1])      # short matrices: the matmul wins
    assert not conv_route_wins(tall.double())                 # no oneDNN fp64 kernels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv_route_wins(tall)                      # bf16: measured a tie, keep the matmul


def test_encoder_pointwise_convs_take_it(monkeypatch):
    """Two fully visible 224 px images: 6272 rows at stride 4 (conv), 98 at stride 32 (matmul)."""
    enc = ss.sparsify(timm.create_model("resnet50"))
    taken = []
    real = rl.conv_route_wins
    monkeypatch.setattr(rl, "conv_route_wins", lambda rows: taken.append(real(rows)) or taken[-1])
    images = torch.randn(2, 3, 224, 224)
    visible = torch.ones(2, 7, 7, dtype=torch.bool)
    with torch.no_grad():
        enc.forward_sparse(images, visible)
    assert any(taken) and not all(taken)  # the large strides take the conv, the deep ones the matmul
