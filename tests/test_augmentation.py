"""The pre-training augmentation is SparK's: RandomResizedCrop(input size, scale 0.67–1, the default
aspect ratios 3/4–4/3, bicubic), a horizontal flip with probability 1/2, ToTensor, ImageNet Normalize;
in that order, and the one the pre-training data set applies."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from spark_sparse.train.data import IMAGENET_MEAN, IMAGENET_STD, PretrainDataset, spark_augmentation

SPARK_MEAN = (0.485, 0.456, 0.406)
SPARK_STD = (0.229, 0.224, 0.225)


def check_parts(t: transforms.Compose, size: int) -> None:
    parts = t.transforms
    assert [type(p) for p in parts] == [transforms.RandomResizedCrop, transforms.RandomHorizontalFlip,
                                        transforms.ToTensor, transforms.Normalize], parts
    crop, flip, _, norm = parts
    assert tuple(crop.size) == (size, size)
    assert tuple(crop.scale) == pytest.approx((0.67, 1.0))
    assert tuple(crop.ratio) == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation == InterpolationMode.BICUBIC
    assert flip.p == 0.5
    assert tuple(norm.mean) == pytest.approx(SPARK_MEAN) and tuple(norm.std) == pytest.approx(SPARK_STD)
    assert not norm.inplace


@pytest.mark.parametrize("size", [32, 224])
def test_parts_and_values(size):
    assert IMAGENET_MEAN == pytest.approx(SPARK_MEAN) and IMAGENET_STD == pytest.approx(SPARK_STD)
    check_parts(spark_augmentation(size), size)


class _OneImage:
    def __init__(self, image):
        self.image = image

    def __len__(self):
        return 1

    def load(self, index):
        return self.image

    def name(self, index):
        return "one"


def test_the_data_set_applies_it():
    check_parts(PretrainDataset(_OneImage(Image.new("RGB", (40, 40))), 32).transform, 32)


def test_constant_image_comes_out_normalised():
    v = (200, 30, 117)
    image = Image.new("RGB", (90, 70), v)
    torch.manual_seed(0)
    out = spark_augmentation(48)(image)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    for c in range(3):
        expected = (v[c] / 255 - SPARK_MEAN[c]) / SPARK_STD[c]
        assert torch.allclose(out[c], torch.full_like(out[c], expected), atol=1e-5), (c, out[c].min(), expected)


def test_flip_half_the_time_and_crops_keep_most_of_the_image():
    """A horizontal ramp: a flip turns its slope over; the crop's span of the ramp tells its width."""
    w, h = 200, 200
    ramp = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    t = spark_augmentation(64)
    flips, spans = 0, []
    for seed in range(60):
        torch.manual_seed(seed)
        out = t(image)[0] * SPARK_STD[0] + SPARK_MEAN[0]  # back to [0, 1]
        row = out[32]
        flips += int(row[-4] < row[4])
        spans.append(float((row[-1] - row[0]).abs()))
    assert 15 <= flips <= 45, flips
    # crop width / image width ≥ sqrt(0.67 · 3/4) ≈ 0.709 (area ≥ 0.67, aspect ≥ 3/4): never a small crop
    assert min(spans) > math.sqrt(0.67 * 3 / 4) - 0.05, min(spans)
