"""Show what a pre-trained SparK model paints into masked patches, as in the SparK paper's figure:
for each image a PNG with three rows — the input, the masked input (only the visible patches), and
the reconstruction with the visible patches pasted back (each masked patch's predicted pixels are
de-normalised with that patch's own mean and variance, since SparK predicts normalised patches).

Images are resized (shorter side) and centre-cropped to --size, a multiple of 32. Masks are drawn
with --mask-ratio from --seed, so a run is reproducible. Besides one PNG per image, all images go
side by side into grid.png. The model runs in eval mode (BatchNorm running statistics)."""
from __future__ import annotations

import os
import sys

NAME = "reconstruct"
HELP = "PNGs of input / masked input / reconstruction from a checkpoint"


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CKPT", help="a pre-training checkpoint (spark-sparse pretrain or import)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="fraction of 32×32 patches hidden (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks")
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default: the checkpoint's input size)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    p.add_argument("--force", action="store_true", help="overwrite PNGs that exist in --out (never an input image)")


def load_image(path: str, size: int):
    """(3, size, size) ImageNet-normalised tensor: shorter side resized to ``size``, centre crop."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    from spark_sparse.train.data import IMAGENET_MEAN, IMAGENET_STD
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: refused, {e} (an image this large is more likely an attack than a photo)") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    return transforms.Compose([
        transforms.Resize(size, interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])(img)


GRID = "grid"  # grid.png: all images side by side


def output_names(paths):
    """One PNG name per image: its file stem, made unique (and never the grid's name)."""
    names, seen = [], {GRID}
    for i, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0] or f"image{i}"
        name = stem if stem not in seen else f"{stem}-{i}"
        seen.add(name)
        names.append(name + ".png")
    return names


def write_png(grid, path: str) -> None:
    from torchvision.utils import save_image

    from spark_sparse.files import atomic_write
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="PNG"), durable=False)


def run(args) -> int:
    import torch
    from spark_sparse.masks import check_mask_ratio, check_patches_both_ways, random_visible
    from spark_sparse.io.checkpoint import CheckpointError
    from spark_sparse.io.checkpoint import load as read_checkpoint
    from spark_sparse.files import check_output
    from spark_sparse.restore import build_model
    from spark_sparse.train.monitor import reconstruction_grid
    from spark_sparse.weights import WeightsError

    try:
        if args.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {args.batch}")
        outputs = [os.path.join(args.out, name) for name in output_names(args.images) + [GRID + ".png"]]
        for path in outputs:
            check_output(path, inputs=[args.checkpoint, *args.images], force=args.force)
        payload = read_checkpoint(args.checkpoint)
        config = payload["model_config"]
        size = args.size or int(config.get("input_size", 224))
        ratio = check_mask_ratio(float(config.get("mask_ratio", 0.6)) if args.mask_ratio is None else args.mask_ratio)
        check_patches_both_ways(size // 32 if size > 0 else 1, ratio, f"--mask-ratio at --size {size}:")
        model = build_model(payload, args.checkpoint).to(args.device)
        if size <= 0 or size % model.patch_size:
            raise ValueError(f"--size must be a positive multiple of {model.patch_size}, got {size}")
        images = torch.stack([load_image(p, size) for p in args.images])
    except (CheckpointError, WeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    grid_hw = (size // model.patch_size,) * 2
    visible = random_visible(len(images), grid_hw, ratio, generator=torch.Generator().manual_seed(args.seed))
    reconstructions, losses = [], []
    with torch.no_grad():
        for start in range(0, len(images), args.batch):
            x = images[start:start + args.batch].to(args.device)
            v = visible[start:start + args.batch].to(args.device)
            loss, rec = model(x, v, return_reconstruction=True)
            reconstructions.append(rec.cpu())
            losses.append(float(loss) * len(x))  # every image hides the same number of patches
    reconstruction = torch.cat(reconstructions)
    os.makedirs(args.out, exist_ok=True)
    patch = model.patch_size
    for i, name in enumerate(output_names(args.images)):
        path = os.path.join(args.out, name)
        write_png(reconstruction_grid(images[i:i + 1], visible[i:i + 1], reconstruction[i:i + 1], patch), path)
        print(f"{args.images[i]} → {path}")
    grid = outputs[-1]
    write_png(reconstruction_grid(images, visible, reconstruction, patch), grid)
    print(f"all {len(images)} image(s) → {grid}  ({size}px, mask ratio {ratio}, seed {args.seed}, "
          f"{payload['arch']} at step {payload.get('step')}; loss on masked patches {sum(losses) / len(images):.4f})")
    return 0
