"""GRN (ConvNeXt V2) on active sites: statistics per image, over that image's active sites only."""
import torch
from timm.layers.grn import GlobalResponseNorm

from spark_sparse.features import SparseFeatures
from spark_sparse.geometry import Geometry
from spark_sparse.layers.grn import SparseGlobalResponseNorm

from tests.equivalence import rel_max


def setup(channels_last: bool):
    g = torch.Generator().manual_seed(0)
    visible = torch.tensor([[[True, False], [False, True]], [[False, True], [False, False]]])
    geometry = Geometry(visible)
    stride, c = 16, 5
    feats = torch.randn(geometry.level(stride).num_sites, c, generator=g, dtype=torch.float64)
    feats[geometry.level(stride).batch_index == 1] *= 50.0  # image 1 has a very different scale
    dense = GlobalResponseNorm(c, channels_last=channels_last).double()
    with torch.no_grad():
        dense.weight.copy_(torch.randn(c, generator=g))
        dense.bias.copy_(torch.randn(c, generator=g))
    return SparseFeatures(feats, geometry, stride), dense


def timm_on_masked_map(dense: GlobalResponseNorm, x: SparseFeatures) -> torch.Tensor:
    """timm's GRN on the zero-filled dense map, read back at the active sites."""
    m = x.dense()
    y = dense(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if dense.channel_dim == -1 else dense(m)
    return SparseFeatures.from_dense(y, x.geometry, x.stride).features


def test_grn_per_image_equals_timm_and_differs_from_per_batch():
    for channels_last in (True, False):
        x, dense = setup(channels_last)
        sparse = SparseGlobalResponseNorm.from_dense(dense)
        out = sparse(x).features
        out = out.detach()
        assert rel_max(out, timm_on_masked_map(dense, x).detach()) < 1e-12
        # The same formula with one statistic for the whole batch is far off on the small image
        # (the large one dominates that statistic): the comparison above can tell them apart.
        norm = x.features.square().sum(0, keepdim=True).sqrt()
        per_batch = x.features + dense.bias + dense.weight * x.features * (norm / (norm.mean() + dense.eps))
        first = x.level.batch_index == 0
        assert rel_max(per_batch[first].detach(), out[first]) > 0.1


def test_grn_gradients_equal_timm_and_skip_empty_images():
    x, dense = setup(True)
    # a third image with no active site: no row, no NaN anywhere
    visible = torch.cat([x.geometry.visible, torch.zeros(1, 2, 2, dtype=torch.bool)])
    x = SparseFeatures(x.features, Geometry(visible), x.stride)
    sparse = SparseGlobalResponseNorm.from_dense(dense)
    f1 = x.features.clone().requires_grad_()
    f2 = x.features.clone().requires_grad_()
    g = torch.randn(x.features.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (sparse(x.replace(f1)).features * g).sum().backward()
    (timm_on_masked_map(dense, x.replace(f2)) * g).sum().backward()
    assert torch.isfinite(f1.grad).all()
    assert rel_max(f1.grad, f2.grad) < 1e-12
    assert rel_max(sparse.weight.grad, dense.weight.grad) < 1e-12
    assert rel_max(sparse.bias.grad, dense.bias.grad) < 1e-12
