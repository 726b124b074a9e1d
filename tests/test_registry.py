"""One registry per layer type: the sparse twin and the masked-dense rule come together, dispatch
follows the class hierarchy, registering again warns, and refusals list what is registered."""
import pytest
import timm
import torch
from torch import nn

import spark_sparse as ss
from spark_sparse.layers.conv import SparseConv2d


class Square(nn.Module):
    """A per-site layer with f(0) = 0 that nothing registers by default."""

    def forward(self, x):
        return x * x


class WideConv(nn.Conv2d):
    """A subclass of a registered type, registered nowhere itself."""


def resnet_with(name, module):
    model = timm.create_model("resnet18")
    setattr(model.layer1[0], name, module)
    return model


def test_an_unregistered_type_is_refused_with_the_registered_list():
    with pytest.raises(ss.UnsupportedLayerError, match=r"layer1\.0\.act1.*Square.*registered: torch\.nn: Identity, "
                                                       r"ReLU.*timm: .*BasicBlock") as err:
        ss.sparsify(resnet_with("act1", Square()))
    assert ss.supported_layers() in str(err.value)
    with pytest.raises(ss.UnsupportedLayerError, match=r"layer1\.0\.act1"):
        ss.MaskedDenseEncoder(resnet_with("act1", Square()))(torch.zeros(1, 3, 64, 64),
                                                            torch.ones(1, 2, 2, dtype=torch.bool))


def test_one_registration_gives_both_meanings_and_a_second_one_warns():
    ss.register_layer(Square, sparse=lambda m, path, converter: m, masked=lambda m, x, masks, path: m(x))
    model = resnet_with("act1", Square()).double()
    encoder, reference = ss.sparsify(model, backend="torch"), ss.MaskedDenseEncoder(model)
    assert isinstance(encoder.layer1[0].act1, Square)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    visible = ss.random_visible(2, 2, 0.5, generator=g)
    for got, want in zip(encoder(images, visible), reference(images, visible)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.warns(UserWarning, match="Square registered again"):
        ss.register_layer(Square, sparse=lambda m, path, converter: m, masked=lambda m, x, masks, path: m(x))


def test_a_subclass_runs_with_its_base_class_rules():
    model = resnet_with("conv1", WideConv(64, 64, 3, padding=1, bias=False))
    assert isinstance(ss.sparsify(model).layer1[0].conv1, SparseConv2d)
