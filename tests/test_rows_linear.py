"""The 1×1 convs' two implementations, ``matmul`` (F.linear) and ``pointwise-conv`` (the rows as
oneDNN's / cuDNN's 1×1 conv), compute F.linear's function: exact in fp64, within fp32 rounding of
the fp64 truth in fp32, with every gradient. The fixed rule takes the conv only where it was
measured faster, and the encoder's pointwise convs then report and run it; ConvNeXt's MLP Linears
are routed the same way."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import spark_sparse as ss
from spark_sparse.kernels.rows_linear import rows_conv1x1
from spark_sparse.layers.conv import SparseConv2d
from spark_sparse.layers.linear import SparseLinear
from spark_sparse.routing import Workload, route
from spark_sparse.routing.rules import ROWS_CONV_MIN
from spark_sparse.spec import ConvSpec
from tests.equivalence import rel_max

CPU = torch.device("cpu")


def _grads(fn, rows, weight, bias, cotangent):
    rows, weight = rows.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    y = fn(rows, weight, bias)
    y.backward(cotangent)
    return [y.detach(), rows.grad, weight.grad] + ([] if bias is None else [bias.grad])


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_conv_is_the_linear_function_in_fp64(n, with_bias):
    g = torch.Generator().manual_seed(n)
    rows = torch.randn(n, 12, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 12, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64) if with_bias else None
    cotangent = torch.randn(n, 5, generator=g, dtype=torch.float64)
    ours = _grads(rows_conv1x1, rows, weight, bias, cotangent)
    for a, b in zip(ours, _grads(F.linear, rows, weight, bias, cotangent)):
        assert rel_max(a, b) <= 1e-13
    assert ours[0].is_contiguous() and ours[1].is_contiguous()


def test_conv_in_fp32_rounds_like_the_matmul():
    """Each fp32 implementation against the fp64 truth: the conv's error is of the matmul's order."""
    g = torch.Generator().manual_seed(0)
    rows, weight = torch.randn(ROWS_CONV_MIN, 64, generator=g), torch.randn(96, 64, generator=g)
    bias, cotangent = torch.randn(96, generator=g), torch.randn(ROWS_CONV_MIN, 96, generator=g)
    truth = _grads(F.linear, rows.double(), weight.double(), bias.double(), cotangent.double())
    for fn in (rows_conv1x1, F.linear):
        got = _grads(fn, rows, weight, bias, cotangent)
        assert all(rel_max(a.double(), b) <= 1e-5 for a, b in zip(got, truth)), fn


def test_fixed_rule_takes_the_conv_only_where_measured_faster():
    spec = ConvSpec(64, 256, (1, 1), (1, 1), (0, 0), (1, 1))
    strided = ConvSpec(64, 256, (1, 1), (2, 2), (0, 0), (1, 1))

    def fixed(spec, dtype, sites, device=CPU):
        return route(spec, 8, device, dtype, routing="fixed", workload=Workload(2, sites)).implementation

    assert fixed(spec, torch.float32, ROWS_CONV_MIN) == "pointwise-conv"
    assert fixed(spec, torch.float32, ROWS_CONV_MIN - 1) == "matmul"      # short matrices: the matmul wins
    assert fixed(strided, torch.float32, ROWS_CONV_MIN) == "matmul"       # a quarter of the rows are outputs
    assert fixed(strided, torch.float32, 4 * ROWS_CONV_MIN) == "pointwise-conv"
    assert fixed(spec, torch.float64, ROWS_CONV_MIN) == "matmul"          # no oneDNN fp64 kernels
    assert fixed(spec, torch.bfloat16, ROWS_CONV_MIN) == "matmul"         # bf16: measured a tie
    assert fixed(spec, torch.float32, ROWS_CONV_MIN, torch.device("cuda")) == "matmul"  # cuBLAS
    assert route(spec, 8, CPU, torch.float32, routing="fixed").implementation == "matmul"  # rows unknown


def test_encoder_pointwise_convs_take_it():
    """Two fully visible 224 px images: 6272 rows at stride 4 (conv), 98 at stride 32 (matmul); the
    route each layer reports is the one its forward runs."""
    enc = ss.sparsify(timm.create_model("resnet50"))
    routes = {}
    for m in enc.modules():
        if isinstance(m, SparseConv2d) and m.spec.kernel == (1, 1):
            m.register_forward_pre_hook(lambda m, a: routes.__setitem__(m.path, m.route_for(a[0]).implementation))
    images = torch.randn(2, 3, 224, 224)
    visible = torch.ones(2, 7, 7, dtype=torch.bool)
    with torch.no_grad():
        enc.forward_sparse(images, visible)
    assert set(routes.values()) == {"matmul", "pointwise-conv"}  # the large strides take the conv
    assert routes["layer1.0.conv1"] == "pointwise-conv" and routes["layer4.0.conv1"] == "matmul"


def test_convnext_linears_are_routed_1x1s_with_the_dense_state_dict():
    """Every MLP Linear of a ConvNeXt becomes a SparseLinear that keeps nn.Linear's parameter names and
    shapes, and the router runs it as a 1×1 conv: two fully visible 224 px images give 6272 rows at
    stride 4 (the conv, by the fixed rule) and 98 at stride 32 (the matmul)."""
    dense = timm.create_model("convnext_atto", conv_mlp=False)
    enc = ss.sparsify(dense)
    linears = {path: m for path, m in enc.named_modules() if isinstance(m, SparseLinear)}
    assert len(linears) == 2 * sum(len(stage.blocks) for stage in dense.stages)
    state = dense.state_dict()
    for path, m in linears.items():
        assert torch.equal(state[f"{path}.weight"], m.weight) and torch.equal(state[f"{path}.bias"], m.bias)
    routes = {}
    for path, m in linears.items():
        m.register_forward_pre_hook(lambda m, a, path=path: routes.__setitem__(path, m.route_for(a[0]).implementation))
    with torch.no_grad():
        enc.forward_sparse(torch.randn(2, 3, 224, 224), torch.ones(2, 7, 7, dtype=torch.bool))
    assert routes["stages.0.blocks.0.mlp.fc1"] == "pointwise-conv" and routes["stages.3.blocks.0.mlp.fc2"] == "matmul"
    assert set(routes) == set(linears)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_routed_layer_built_directly_is_initialised_as_torch_initialises_its_dense_layer(kind):
    """Built directly (not from a dense layer), a SparseConv2d or SparseLinear holds torch's own
    initialisation, drawn in the same order: never uninitialised memory."""
    torch.manual_seed(3)
    sparse = (SparseConv2d(ConvSpec(6, 10, (3, 3), (1, 1), (1, 1), (1, 1)), bias=True) if kind == "conv"
              else SparseLinear(6, 10, bias=True))
    torch.manual_seed(3)
    dense = nn.Conv2d(6, 10, 3, padding=1) if kind == "conv" else nn.Linear(6, 10)
    assert torch.equal(sparse.weight, dense.weight) and torch.equal(sparse.bias, dense.bias)


def test_converting_a_dense_model_draws_no_random_numbers():
    """sparsify loads the dense parameters, so it draws nothing: what is built after the encoder (SparK's
    decoder) starts from the same weights as with the masked-dense encoder, for one seed."""
    model = timm.create_model("convnext_atto", conv_mlp=False)
    state = torch.get_rng_state()
    ss.sparsify(model)
    assert torch.equal(torch.get_rng_state(), state)
