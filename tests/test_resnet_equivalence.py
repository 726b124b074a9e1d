"""Sparse encoder == masked-dense reference for timm ResNets (forward, every gradient, BN stats).

The grid is sizes {224², 256², 192×320} × batch {1, 4} × ratio {0, 0.6, 0.9} × {train,
eval} × 2 backends × 2 models. Running all of it (fp32 and fp64) would take most of CI, so each
model/backend runs a covering set in which every value of every factor, and every size × ratio
pair, appears; the spconv backend additionally is shown to use exactly the torch backend's index
pairs (test_spconv_guards.py), so its arithmetic is the same on the CPU.
"""
import pytest

from tests.equivalence import check_equivalence, cached_model as model

# (batch, size, ratio, train)
FULL_GRID = [
    (1, 224, 0.6, True), (4, 224, 0.0, False), (1, 224, 0.9, False),
    (1, 256, 0.0, True), (4, 256, 0.9, True), (1, 256, 0.6, False),
    (1, (192, 320), 0.9, True), (1, (192, 320), 0.0, False), (4, (192, 320), 0.6, True),
]
SMALL_GRID = [(1, 224, 0.6, True), (4, (192, 320), 0.9, False), (1, 256, 0.0, True)]

@pytest.mark.parametrize("batch,size,ratio,train", FULL_GRID)
def test_resnet18_torch(batch, size, ratio, train):
    check_equivalence(model("resnet18"), "torch", batch, size, ratio, train)


@pytest.mark.parametrize("batch,size,ratio,train", SMALL_GRID)
def test_resnet18_spconv(batch, size, ratio, train):
    pytest.importorskip("spconv")
    check_equivalence(model("resnet18"), "spconv", batch, size, ratio, train)


@pytest.mark.parametrize("batch,size,ratio,train", FULL_GRID[::2])
def test_resnet50_torch(batch, size, ratio, train):
    check_equivalence(model("resnet50"), "torch", batch, size, ratio, train)


@pytest.mark.parametrize("batch,size,ratio,train", SMALL_GRID[:2])
def test_resnet50_spconv(batch, size, ratio, train):
    pytest.importorskip("spconv")
    check_equivalence(model("resnet50"), "spconv", batch, size, ratio, train)


def test_drop_path_draws_per_image():
    """DropPath on: both sides draw one keep/drop per image from the same seeded RNG."""
    check_equivalence(model("resnet18", drop_path_rate=0.5), "torch", 4, 224, 0.6, True)


@pytest.mark.parametrize("arch", ["resnet26d", "resnet34"])
def test_other_resnets(arch):
    """Deep stem, average-pool shortcuts (the 'd' variants) and BasicBlock stacks."""
    check_equivalence(model(arch), "torch", 2, 224, 0.6, True)
