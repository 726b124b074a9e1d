"""The dense depthwise conv with the role-swapped weight gradient computes F.conv2d's numbers."""
import pytest
import torch
import torch.nn.functional as F

from spark_sparse.kernels.depthwise_conv import depthwise_conv2d, depthwise_weight_grad

CASES = [  # batch, channels, height, width, kernel, padding
    (3, 5, 9, 11, (7, 7), (3, 3)),       # ConvNeXt's 7×7 on a padded map
    (2, 4, 14, 22, (7, 7), (0, 0)),      # a halo tile: no padding, the halo is the input's border
    (1, 3, 1, 1, (7, 7), (3, 3)),        # one pixel: the kernel's centre only
    (2, 6, 8, 5, (3, 5), (1, 2)),        # non-square kernel
    (4, 2, 6, 6, (3, 3), (0, 0)),
]


def _inputs(b, c, h, w, kernel, padding, dtype, channels_last):
    g = torch.Generator().manual_seed(b * 100 + c)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c, 1, *kernel, generator=g, dtype=torch.float64)
    ho, wo = h + 2 * padding[0] - kernel[0] + 1, w + 2 * padding[1] - kernel[1] + 1
    dy = torch.randn(b, c, ho, wo, generator=g, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return (x.to(dtype).contiguous(memory_format=fmt), weight.to(dtype), dy.to(dtype).contiguous(memory_format=fmt))


def _grads(fn, x, weight, dy):
    x = x.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True)
    y = fn(x, weight)
    y.backward(dy)
    return y.detach(), x.grad, weight.grad


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_fp64_output_and_gradients_equal_conv2d(case, channels_last):
    *shape, kernel, padding = case
    x, weight, dy = _inputs(*shape, kernel, padding, torch.float64, channels_last)
    ours = _grads(lambda a, w: depthwise_conv2d(a, w, padding), x, weight, dy)
    torch_s = _grads(lambda a, w: F.conv2d(a, w, None, 1, padding, 1, w.shape[0]), x, weight, dy)
    for name, a, b in zip(("output", "input grad", "weight grad"), ours, torch_s):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.allclose(a, b, rtol=0, atol=1e-12), f"{name}: {(a - b).abs().max().item():.3e}"


def test_the_swapped_gradient_is_used():
    x, weight, _ = _inputs(2, 3, 5, 5, (3, 3), (1, 1), torch.float64, True)
    y = depthwise_conv2d(x, weight.requires_grad_(True), (1, 1))
    assert "DepthwiseConv2d" in type(y.grad_fn).__name__


def test_only_the_weight_or_only_the_input_needs_a_gradient():
    x, weight, dy = _inputs(2, 3, 6, 7, (3, 3), (1, 1), torch.float64, True)
    w = weight.clone().requires_grad_(True)
    depthwise_conv2d(x, w, (1, 1)).backward(dy)  # x needs none
    ref_w = weight.clone().requires_grad_(True)
    F.conv2d(x, ref_w, None, 1, 1, 1, 3).backward(dy)
    assert torch.allclose(w.grad, ref_w.grad, rtol=0, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    y = depthwise_conv2d(xg, weight, (1, 1))  # a frozen weight takes torch's own path
    assert y.grad_fn is not None and "DepthwiseConv2d" not in type(y.grad_fn).__name__


def test_dilation_falls_back_to_conv2d():
    x, weight, _ = _inputs(2, 3, 9, 9, (3, 3), (2, 2), torch.float64, True)
    dy = torch.randn(2, 3, 9, 9, dtype=torch.float64)  # 'same' size: padding 2 = dilation 2 × (3 // 2)
    ours = _grads(lambda a, w: depthwise_conv2d(a, w, (2, 2), (2, 2)), x, weight, dy)
    torch_s = _grads(lambda a, w: F.conv2d(a, w, None, 1, 2, 2, 3), x, weight, dy)
    for a, b in zip(ours, torch_s):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_weight_grad_rounds_like_torchs(dtype):
    """Against the fp64 truth, the role-swapped gradient rounds at most a little more than torch's
    own (bf16: each image's part is rounded before the sum over images)."""
    x, weight, dy = _inputs(8, 16, 14, 14, (7, 7), (3, 3), torch.float64, True)
    truth = depthwise_weight_grad(x, dy, (7, 7), (3, 3))
    lx, lw, ldy = x.to(dtype), weight.to(dtype), dy.to(dtype)
    ours = depthwise_weight_grad(lx, ldy, (7, 7), (3, 3)).double()
    torch_s = torch.ops.aten.convolution_backward(ldy, lx, lw, None, [1, 1], [3, 3], [1, 1], False, [0, 0], 16,
                                                  [False, True, False])[1].double()
    scale = truth.abs().max()
    err_ours, err_torch = ((ours - truth).abs().max() / scale).item(), ((torch_s - truth).abs().max() / scale).item()
    assert err_ours <= 2 * err_torch + (1e-7 if dtype == torch.float32 else 1e-3), (err_ours, err_torch)


def test_bf16_under_autocast_keeps_the_callers_dtype():
    x, weight, dy = _inputs(2, 4, 8, 8, (3, 3), (1, 1), torch.bfloat16, True)
    w = weight.clone().requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        y = depthwise_conv2d(x, w, (1, 1))
    y.backward(dy)
    assert y.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16


def test_an_empty_batch_has_a_zero_weight_gradient():
    """A batch with no images (a tile shape no visible run has) gives a zero gradient, as torch's."""
    x = torch.zeros(0, 4, 14, 14, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(4, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    depthwise_conv2d(x, weight, (0, 0)).sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and x.grad.shape == x.shape
