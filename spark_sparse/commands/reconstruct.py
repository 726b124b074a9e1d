"""Show what a pre-trained SparK model paints into masked patches, as in the SparK paper's figure:
for each image a PNG with three rows — the input, the masked input (only the visible patches), and
the reconstruction with the visible patches pasted back (each masked patch's predicted pixels are
de-normalised with that patch's own mean and variance, since SparK predicts normalised patches).

Each image's centred square is resized to --size, a multiple of 32. Masks are drawn
with --mask-ratio from --seed, so a run is reproducible. Besides one PNG per image, all images go
side by side into grid.png. The model runs in eval mode (BatchNorm running statistics)."""
from __future__ import annotations

import os
import sys

from spark_sparse.checks import at_least

NAME = "reconstruct"
HELP = "PNGs of input / masked input / reconstruction from a checkpoint"


MIN_SIZE = 64    # 2×2 patches: with one patch no mask ratio both shows and hides something
MAX_SIZE = 1024  # the decoder's full-resolution maps grow with size²; SparK trains at 224


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CKPT", help="a pre-training checkpoint (spark-sparse pretrain or import)")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files (any format Pillow reads; 16-bit grayscale is scaled to 8 bits)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the PNGs, created if needed: one per image, named after its file (<stem>.png, "
                        "<stem>-N.png where two names clash), and grid.png with all of them")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="fraction of 32×32 patches hidden, in [0, 1) (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks (0 … 2^32−1)")
    p.add_argument("--size", type=int, default=None,
                   help=f"image size in pixels, a multiple of 32 from {MIN_SIZE} to {MAX_SIZE} (default: the "
                        f"checkpoint's input size)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument("--force", action="store_true", help="overwrite PNGs that exist in --out (never an input image)")


def check_size(size: int, source: str) -> int:
    """``size`` if the model can reconstruct at it; ``source`` says where it came from, for the message."""
    from spark_sparse.plan import PATCH_SIZE
    if size % PATCH_SIZE or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"{source} must be a multiple of {PATCH_SIZE} from {MIN_SIZE} to {MAX_SIZE}, got {size}")
    return size


def load_image(path: str, size: int):
    """(3, size, size) ImageNet-normalised tensor: the centred square of the image, resized to ``size``.

    Cropping before resizing gives the picture of resize-shorter-side-then-centre-crop without first
    making a huge intermediate from a very elongated image."""
    import warnings

    from PIL import Image
    from torchvision import transforms

    from spark_sparse.images import IMAGENET_MEAN, IMAGENET_STD, to_rgb
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said below, in one line
            with Image.open(path) as img:
                img = to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: refused, {e} (an image this large is more likely an attack than a photo)") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    width, height = img.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        print(f"note: {path} has {width}×{height} pixels, more than Pillow's guard against decompression bombs "
              f"({Image.MAX_IMAGE_PIXELS}); read it anyway", file=sys.stderr)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)


GRID = "grid"  # grid.png: all images side by side


def output_names(paths):
    """One PNG name per image: its file stem, made unique (and never the grid's name)."""
    names, seen = [], {GRID}
    for i, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0] or f"image{i}"
        name, n = stem, i
        while name in seen:
            name, n = f"{stem}-{n}", n + 1
        seen.add(name)
        names.append(name + ".png")
    return names


def write_png(grid, path: str) -> None:
    from torchvision.utils import save_image

    from spark_sparse.files import atomic_write
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="PNG"), durable=False)


def run(args) -> int:
    import torch

    from spark_sparse.devices import resolve_device
    from spark_sparse.files import check_output
    from spark_sparse.io.checkpoint import CheckpointError
    from spark_sparse.io.checkpoint import load as read_checkpoint
    from spark_sparse.masks import check_mask_ratio, check_patches_both_ways, random_visible
    from spark_sparse.restore import build_model
    from spark_sparse.seeds import check_seed
    from spark_sparse.spark import reconstruction_grid
    from spark_sparse.weights import WeightsError

    try:
        at_least(args.batch, "--batch")
        check_seed(args.seed)
        if args.size is not None:
            check_size(args.size, "--size")
        if args.mask_ratio is not None:
            check_mask_ratio(args.mask_ratio, "--mask-ratio")
        if not args.out:
            raise ValueError("--out is empty; give the folder for the PNGs")
        device = resolve_device(args.device, 0)
        names = output_names(args.images)
        outputs = [os.path.join(args.out, name) for name in names + [GRID + ".png"]]
        for path in outputs:
            check_output(path, inputs=[args.checkpoint, *args.images], force=args.force)
        payload = read_checkpoint(args.checkpoint)
        config = payload["model_config"]
        size = args.size or check_size(int(config["input_size"]), "the checkpoint's input size (--size)")
        if args.mask_ratio is None:
            ratio = check_mask_ratio(float(config["mask_ratio"]), "the checkpoint's mask ratio (--mask-ratio)")
            what = f"the checkpoint's mask ratio (--mask-ratio) at size {size}:"
        else:
            ratio, what = args.mask_ratio, f"--mask-ratio at size {size}:"
        check_patches_both_ways(size // int(config["patch_size"]), ratio, what)
        model = build_model(payload, args.checkpoint).to(device)
        images = torch.stack([load_image(p, size) for p in args.images])
    except (CheckpointError, WeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    grid_hw = (size // model.patch_size,) * 2
    visible = random_visible(len(images), grid_hw, ratio, generator=torch.Generator().manual_seed(args.seed))
    reconstructions, losses = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(images), args.batch):
                x = images[start:start + args.batch].to(device)
                v = visible[start:start + args.batch].to(device)
                loss, rec = model(x, v, return_reconstruction=True)
                reconstructions.append(rec.cpu())
                losses.append(float(loss) * len(x))  # every image hides the same number of patches
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(f"error: out of memory reconstructing {len(x)} image(s) of {size}px on {device} ({type(e).__name__}); "
              f"use a smaller --batch or --size", file=sys.stderr)
        return 1
    reconstruction = torch.cat(reconstructions)
    patch = model.patch_size
    try:
        os.makedirs(args.out, exist_ok=True)
        for i, name in enumerate(names):
            path = os.path.join(args.out, name)
            write_png(reconstruction_grid(images[i:i + 1], visible[i:i + 1], reconstruction[i:i + 1], patch), path)
            print(f"{args.images[i]} → {path}")
        grid = outputs[-1]
        write_png(reconstruction_grid(images, visible, reconstruction, patch), grid)
    except OSError as e:
        print(f"error: cannot write the PNGs into {args.out}: {e}", file=sys.stderr)
        return 1
    print(f"all {len(images)} image(s) → {grid}  ({size}px, mask ratio {ratio}, seed {args.seed}, "
          f"{payload['arch']} at step {payload.get('step')}; loss on masked patches {sum(losses) / len(images):.4f})")
    return 0
