import pytest
import torch

import spark_sparse as ss


@pytest.mark.parametrize("grid,ratio,keep", [((7, 7), 0.6, 20), ((8, 8), 0.75, 16), ((6, 10), 0.9, 6),
                                             ((7, 7), 0.0, 49)])
def test_exact_count_per_image(grid, ratio, keep):
    visible = ss.random_visible(5, grid, ratio, generator=torch.Generator().manual_seed(0))
    assert visible.dtype == torch.bool and visible.shape == (5, *grid)
    assert visible.flatten(1).sum(1).tolist() == [keep] * 5


def test_reproducible_and_independent_per_image():
    a = ss.random_visible(8, 7, 0.6, generator=torch.Generator().manual_seed(3))
    b = ss.random_visible(8, 7, 0.6, generator=torch.Generator().manual_seed(3))
    c = ss.random_visible(8, 7, 0.6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(v.flatten().tolist()) for v in a}) > 1, "images must get different masks"


def test_uniform_over_patches():
    visible = ss.random_visible(4000, 7, 0.6, generator=torch.Generator().manual_seed(0))
    freq = visible.float().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 20 / 49), atol=0.04)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        ss.random_visible(2, 7, ratio)
