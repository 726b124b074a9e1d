"""relu6_: torch's ReLU6 numbers and gradient, in place, without torch's hidden copy."""
import copy

import torch
import torch.nn.functional as F

from spark_sparse.activation import relu6_
from spark_sparse.decoder import LightDecoder


def _values():
    # the gate's edges exactly (0 and 6), both sides of them, and ordinary values
    edges = torch.tensor([-1.0, -0.0, 0.0, 1e-300, 3.0, 6.0 - 1e-12, 6.0, 6.0 + 1e-12, 9.0], dtype=torch.float64)
    return torch.cat([edges, torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5])


def test_fp64_values_and_gradient_equal_torchs():
    base = _values().reshape(1, 1, -1).requires_grad_(True)
    cotangent = torch.randn_like(base)
    ours_in = base * 1.0
    ours = relu6_(ours_in)
    assert ours.data_ptr() == ours_in.data_ptr()  # in place
    theirs = F.relu6(base * 1.0, inplace=True)
    assert torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, base, cotangent)
    (g_theirs,) = torch.autograd.grad(theirs, base, cotangent)
    assert torch.equal(g_ours, g_theirs)


def test_without_autograd_it_is_a_plain_clamp():
    x = _values()
    expected = F.relu6(x)
    with torch.no_grad():
        y = relu6_(x.clone().requires_grad_(True) * 1.0)
    assert torch.equal(y, expected) and y.grad_fn is None
    assert torch.equal(relu6_(x.clone()), expected)


def test_saves_no_copy_of_the_map():
    """Followed by a conv (as in the decoder), torch's in-place ReLU6 leaves two maps saved for the
    backward pass (the conv's input and its own copy); relu6_ leaves one."""
    def saved_bytes(fn):
        seen, total = set(), [0]

        def pack(t):
            if t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total[0] += t.untyped_storage().nbytes()
            return t
        x = torch.randn(4, 8, 16, 16, requires_grad=True)
        conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            conv(fn(x * 2.0))
        return total[0]
    one_map, conv_weight = 4 * 8 * 16 * 16 * 4, 8 * 8 * 3 * 3 * 4
    assert saved_bytes(relu6_) == one_map + conv_weight  # the clamped map once, shared with the conv
    assert saved_bytes(lambda t: F.relu6(t, inplace=True)) >= saved_bytes(relu6_)


def test_decoder_ours_and_as_published_agree_in_fp64():
    """Every layer of the decoder ours or as SparK's code runs it: output, every gradient and the
    BatchNorm statistics."""
    torch.manual_seed(0)
    ours = LightDecoder(patch_size=8, width=16).double().train()
    published = copy.deepcopy(ours)
    published.set_as_published(True)
    maps = [torch.randn(2, w, 3 * 2 ** i, 3 * 2 ** i, dtype=torch.float64) for i, w in enumerate(ours.widths)]
    outs, grads = [], []
    for decoder in (ours, published):
        inputs = [m.clone().requires_grad_(True) for m in maps]
        y = decoder(inputs)
        y.backward(torch.ones_like(y))
        outs.append(y.detach())
        grads.append([t.grad for t in inputs] + [p.grad for p in decoder.parameters()])
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    for (name, a), (_, b) in zip(ours.named_buffers(), published.named_buffers()):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-12), name
    assert not any(block.composes(maps[-1]) for block in published.dec)
