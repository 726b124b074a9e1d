"""Pre-training data: folders, the embedded photographs, unreadable files, deterministic order."""
import os

import pytest
import torch
from PIL import Image

from tests.pretrain_utils import make_image_folder
from spark_sparse.train.data import (EmbeddedPhotos, FolderImages, PretrainDataset, ResumableBatchSampler,
                                     collate)


def test_embedded_photographs_are_real_colour_crops():
    source = EmbeddedPhotos()
    assert len(source) == 9 * 32
    names = {source.name(i).split("[")[0] for i in range(len(source))}
    assert "astronaut.png" in names and "chelsea.png" in names and "camera.png" not in names
    img = source.load(5)
    assert img.mode == "RGB" and img.size[0] == img.size[1] and img.size[0] >= 50
    ds = PretrainDataset(source, 64, seed=0)
    a, skipped = ds[(0, 5)]
    assert a.shape == (3, 64, 64) and skipped == []
    assert torch.equal(a, ds[(0, 5)][0]), "the same key gives the same augmentation"
    assert not torch.equal(a, ds[(1, 5)][0]), "another epoch gives another augmentation"
    assert a.std() > 0.1 and a.mean().abs() < 2  # ImageNet-normalised photo pixels


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    root = make_image_folder(str(tmp_path / "data"), count=6)
    open(os.path.join(root, "class0", "zz_garbage.jpg"), "wb").write(os.urandom(500))
    good = os.path.join(root, "class1", "img001.png")
    data = open(good, "rb").read()
    open(os.path.join(root, "class1", "img999_truncated.png"), "wb").write(data[: len(data) // 2])
    source = FolderImages(root)
    assert len(source) == 8
    ds = PretrainDataset(source, 32)
    items = [ds[(0, i)] for i in range(len(ds))]
    images, skipped = collate(items)
    assert images.shape == (8, 3, 32, 32)
    assert sorted(os.path.basename(n) for n, _ in skipped) == ["img999_truncated.png", "zz_garbage.jpg"]
    assert all(reason for _, reason in skipped)


def test_missing_or_empty_folders_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderImages(str(tmp_path / "nope"))
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file; pass the folder"):
        FolderImages(str(tmp_path / "a.jpg"))
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "empty" / "readme.txt.gif")  # not an accepted extension
    with pytest.raises(FileNotFoundError, match="no images"):
        FolderImages(str(tmp_path / "empty"))


def test_process_shards_interleave_into_the_single_process_batch():
    ds = list(range(37))
    one = ResumableBatchSampler(ds, 8, rank=0, world=1, seed=3)
    shards = [ResumableBatchSampler(ds, 4, rank=r, world=2, seed=3) for r in range(2)]
    for s in [one, *shards]:
        s.set_position(epoch=2)
    assert one.batches_per_epoch == shards[0].batches_per_epoch == 4
    for full, a, b in zip(one, *shards):
        merged = [None] * 8
        merged[0::2], merged[1::2] = a, b
        assert merged == full  # process r's i-th image is the global batch's image r + 2i
    one.set_position(epoch=2, start_batch=3)
    again = ResumableBatchSampler(ds, 8, seed=3)
    again.set_position(2)
    assert list(one) == list(again)[3:], "a resumed epoch continues with the same batches"
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(list(range(5)), 4, world=2)


def test_the_runs_own_output_is_not_data_and_the_fingerprint_follows_the_files(tmp_path):
    root = make_image_folder(str(tmp_path / "data"), count=4)
    out = os.path.join(root, "run", "vis")  # --out inside --data: its reconstruction PNGs are not images to train on
    os.makedirs(out)
    Image.new("RGB", (8, 8)).save(os.path.join(out, "reconstruction-00000001.png"))
    images = FolderImages(root, exclude=os.path.join(root, "run"))
    assert len(images) == 4 and len(FolderImages(root)) == 5
    moved = str(tmp_path / "moved")
    os.rename(root, moved)
    assert FolderImages(moved, exclude=os.path.join(moved, "run")).fingerprint() == images.fingerprint()
    os.remove(os.path.join(moved, "class0", "img000.jpg"))
    assert FolderImages(moved, exclude=os.path.join(moved, "run")).fingerprint() != images.fingerprint()
