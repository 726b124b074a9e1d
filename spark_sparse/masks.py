"""Patch masks: which patches of the backbone's patch grid (stride 32) an image keeps visible.

A mask is a bool tensor ``visible`` of shape (B, h, w), True = visible. Every layer of the encoder
reads its active set from this one tensor (repeated 32/s times per axis at stride s), never from
non-zero feature values, so a visible pixel that happens to be exactly zero stays active.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from .checks import at_least

Grid = Union[int, Sequence[int]]


def _whole(value, what: str) -> int:
    """``value`` as an int, refusing a fraction (2.7 patches or images would be truncated silently)."""
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _grid_hw(grid: Grid) -> Tuple[int, int]:
    if isinstance(grid, (int, float)):
        h = w = _whole(grid, "grid")
    else:
        if len(grid) != 2:
            raise ValueError(f"grid must be an int or (h, w), got {tuple(grid)!r}")
        h, w = (_whole(v, "grid") for v in grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be positive, got ({h}, {w})")
    return h, w


def check_mask_ratio(mask_ratio: float, name: str = "mask_ratio", *, allow_zero: bool = True) -> float:
    """Return ``mask_ratio`` as a float, or raise if it is not in [0, 1) — or, with ``allow_zero=False``,
    in (0, 1): a model's ratio, since SparK's loss is computed on masked patches only and a ratio of 0
    hides none, so nothing is learnt. ``name`` is what the caller calls it (an API argument or a
    command's option) in the message. NaN is refused."""
    ratio = float(mask_ratio)
    low_ok = ratio >= 0.0 if allow_zero else ratio > 0.0
    if not (low_ok and ratio < 1.0):
        if allow_zero:
            raise ValueError(f"{name} must be in [0, 1) (the fraction of patches hidden), got {mask_ratio!r}")
        raise ValueError(f"{name} must be in (0, 1) (the fraction of patches hidden; the loss is computed on "
                         f"hidden patches only, so a ratio of 0 learns nothing), got {mask_ratio!r}")
    return ratio


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """SparK's count of kept patches: ``round(L * (1 - ratio))`` (Python rounding, as in SparK)."""
    return round(num_patches * (1.0 - check_mask_ratio(mask_ratio)))


def check_patches_both_ways(grid: Grid, mask_ratio: float, what: str = "mask ratio") -> int:
    """Refuse a ratio that, on this grid, leaves SparK's mask no visible patch (the encoder would see
    nothing) or no masked patch (the loss, defined on masked patches, would be empty); return the
    number kept per image."""
    h, w = _grid_hw(grid)
    keep = num_visible(h * w, mask_ratio)
    if keep == 0:
        raise ValueError(f"{what} {mask_ratio} keeps round({h * w} × (1 − {mask_ratio})) = 0 of the {h}×{w} patches "
                         f"visible: every image would be fully masked; use a ratio below {1 - 0.5 / (h * w):.4g} or "
                         f"a larger image")
    if keep == h * w:
        raise ValueError(f"{what} {mask_ratio} hides none of the {h}×{w} patches (round({h * w} × (1 − "
                         f"{mask_ratio})) = {keep}): the loss is defined on masked patches only, so there would be "
                         f"nothing to predict; use a ratio above {0.5 / (h * w):.4g} (SparK: 0.6)")
    return keep


def random_visible(batch: int, grid: Grid, mask_ratio: float, *, generator: Optional[torch.Generator] = None,
                   device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Draw a SparK mask: each image independently keeps exactly ``round(h*w*(1-mask_ratio))`` patches.

    Uniform noise per patch, argsort, keep the first k (as SparK does). The noise is drawn on the
    generator's device (the CPU by default), so a seeded generator gives the same mask on any device.
    Returns a bool tensor (batch, h, w) on ``device``, True = visible.
    """
    at_least(_whole(batch, "batch"), "batch")
    h, w = _grid_hw(grid)
    keep = num_visible(h * w, mask_ratio)
    noise_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(int(batch), h * w, generator=generator, device=noise_device)
    order = noise.argsort(dim=1)
    visible = torch.zeros(int(batch), h * w, dtype=torch.bool, device=noise_device)
    visible.scatter_(1, order[:, :keep], True)
    return visible.view(int(batch), h, w).to(device or noise_device)


def patch_grid(height: int, width: int, patch_size: int, what: str = "image size") -> Tuple[int, int]:
    """The (H/patch, W/patch) patch grid of an image size; a clear error unless both sides are
    positive multiples of ``patch_size`` (read from the encoder, or ``plan.PATCH_SIZE`` before one
    is built)."""
    if height <= 0 or width <= 0 or height % patch_size or width % patch_size:
        raise ValueError(f"{what} {height}x{width} is not a multiple of {patch_size} (the backbone stride): height "
                         f"and width must be positive multiples of {patch_size} (e.g. 224, 256, 320)")
    return height // patch_size, width // patch_size


def check_visible(visible: torch.Tensor, images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Validate ``visible`` against a batch of images; return it on the images' device."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got dtype {images.dtype}")
    b, _, height, width = images.shape
    expected = (b, *patch_grid(height, width, patch_size))
    if not isinstance(visible, torch.Tensor):
        raise TypeError(f"visible must be a bool tensor of shape {expected}, got {type(visible).__name__}")
    if visible.dtype != torch.bool:
        raise TypeError(f"visible must be a bool tensor (True = visible patch) of shape {expected}, "
                        f"got dtype {visible.dtype}")
    if tuple(visible.shape) != expected:
        raise ValueError(f"visible must have shape (B, H/{patch_size}, W/{patch_size}) = {expected} for images "
                         f"of shape {tuple(images.shape)}, got {tuple(visible.shape)}")
    return visible.to(images.device)


def dense_mask(visible: torch.Tensor, stride: int, patch_size: int) -> torch.Tensor:
    """The active set at ``stride`` as a dense (B, 1, H/stride, W/stride) bool map."""
    r = patch_size // stride
    return visible.repeat_interleave(r, 1).repeat_interleave(r, 2).unsqueeze(1)


class MaskPyramid:
    """The active set of one batch as dense {0,1} maps, one per resolution, made on first use
    (how SparK's masked-dense model sees a mask: passed down explicitly, never kept in a global)."""

    def __init__(self, visible: torch.Tensor, patch_size: int, dtype: torch.dtype):
        self.visible = visible
        self.patch_size = patch_size
        self.dtype = dtype
        self._maps: Dict[int, torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) mask at the resolution of ``x``."""
        stride = self.patch_size * self.visible.shape[1] // x.shape[-2]
        if stride not in self._maps:
            self._maps[stride] = dense_mask(self.visible, stride, self.patch_size).to(self.dtype)
        return self._maps[stride].to(x.dtype)
