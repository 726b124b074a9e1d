"""Image files read as 8-bit RGB, the one way training data and ``reconstruct`` read them.

Pillow's ``convert("RGB")`` clips every value above 255, so a 16-bit grayscale PNG or TIFF (mode
``I;16`` or ``I``, common for scans and microscopy) would come out almost white; those are scaled
from their 16-bit range instead. A 32-bit float image has no agreed range, so it is refused rather
than guessed at. An EXIF orientation tag is not applied, as in SparK's (torchvision's) loader, so that
the pixels of a data set are the ones SparK trains on.

Tensors the model sees are ImageNet-normalised (timm's ImageNet mean and standard deviation, as
SparK); :func:`denormalize` turns them back into [0, 1] pixels for viewing.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)  # (0.485, 0.456, 0.406)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)    # (0.229, 0.224, 0.225)

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image; 16-bit grayscale scaled by 255 / 65535, float refused (ValueError)."""
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img, dtype=np.float64)
        if img.mode != "I" or values.max(initial=0) > 255:  # mode I holding 8-bit values stays as it is
            values = values * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        raise ValueError("a 32-bit floating-point image, which has no standard range of values; save it as an "
                         "8- or 16-bit image")
    return img.convert("RGB")


def open_rgb(path: str) -> Image.Image:
    """The image in ``path`` decoded in full (a truncated or corrupt file raises here) as 8-bit RGB."""
    with Image.open(path) as img:
        return to_rgb(img)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (B, 3, H, W) tensors back to [0, 1] pixels (for viewing)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)
