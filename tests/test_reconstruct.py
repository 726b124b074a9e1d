"""spark-sparse reconstruct: SparK's figure (input / masked input / reconstruction) as PNGs."""
import os

import numpy as np
import torch
from PIL import Image

from tests.export_utils import cli, trained_spark, write_checkpoint
from spark_sparse.train.data import embedded_photo_paths

SIZE, PAD = 64, 2


def test_reconstruct_writes_the_three_rows_per_image(tmp_path):
    path = write_checkpoint(trained_spark("resnet18"), "resnet18", str(tmp_path / "ckpt.pt"))
    photo = embedded_photo_paths()[0]
    odd = tmp_path / "wide.jpg"  # not square, not a multiple of 32: resized and centre-cropped
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)).save(odd)
    out = tmp_path / "vis"
    rc, stdout, stderr = cli("reconstruct", path, photo, odd, "--out", out, "--mask-ratio", "0.75", "--seed", "3")
    assert rc == 0, stdout + stderr
    names = sorted(os.listdir(out))
    assert names == sorted([os.path.splitext(os.path.basename(photo))[0] + ".png", "wide.png", "grid.png"])

    single = np.asarray(Image.open(out / "wide.png").convert("RGB"))
    assert single.shape == (3 * SIZE + 4 * PAD, SIZE + 2 * PAD, 3)
    assert Image.open(out / "grid.png").size == (2 * SIZE + 3 * PAD, 3 * SIZE + 4 * PAD)
    rows = [single[PAD + i * (SIZE + PAD):PAD + i * (SIZE + PAD) + SIZE, PAD:PAD + SIZE] for i in range(3)]
    image, masked, rec = (torch.from_numpy(r.astype(np.int16)) for r in rows)
    # patch grid 2×2 at 64 px, ratio 0.75: one visible patch; it is in the masked row, the others are black,
    # and the reconstruction shows the input there, its own prediction elsewhere
    patches = lambda x: x.reshape(2, 32, 2, 32, 3).permute(0, 2, 1, 3, 4).reshape(4, -1)  # noqa: E731
    visible = patches(masked).abs().sum(1) > 0
    assert int(visible.sum()) == 1
    assert torch.equal(patches(rec)[visible], patches(image)[visible])
    assert not torch.equal(patches(rec)[~visible], patches(image)[~visible])

    before, before_grid = (out / "wide.png").read_bytes(), (out / "grid.png").read_bytes()
    again = ("reconstruct", path, photo, odd, "--out", tmp_path / "again", "--mask-ratio", "0.75")
    assert cli(*again, "--seed", "3")[0] == 0
    assert (tmp_path / "again" / "wide.png").read_bytes() == before, "the same seed gives the same figure"
    assert cli(*again, "--seed", "4")[0] == 2, "existing PNGs are not overwritten without --force"
    assert cli(*again, "--seed", "4", "--force")[0] == 0
    assert (tmp_path / "again" / "grid.png").read_bytes() != before_grid, "another seed, other masks"
