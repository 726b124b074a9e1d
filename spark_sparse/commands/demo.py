"""Sparsify a timm backbone, check it against SparK's masked-dense reference on one batch
(features of every stage, gradients of every parameter and of the input), and report the MAC
ratio and the time of both. Random weights: nothing is downloaded."""
from __future__ import annotations

import copy
import sys
import time

from spark_sparse.checks import at_least
from spark_sparse.commands.options import SIZE_HELP, add_backend, image_size
from spark_sparse.recipe import INPUT_SIZE, MASK_RATIO

NAME = "demo"
HELP = "check a sparse encoder against the masked-dense reference and print its FLOP ratio"


def add_arguments(p):
    p.add_argument("--arch", default="resnet50",
                   help="timm model name: resnet18 … resnet200, resnet*d, convnext_atto … convnext_large, convnextv2_*")
    p.add_argument("--mask-ratio", type=float, default=MASK_RATIO, help="fraction of 32×32 patches hidden, in [0, 1)")
    p.add_argument("--batch", type=int, default=2, help="images per batch")
    p.add_argument("--size", type=int, nargs="+", default=[INPUT_SIZE], help=SIZE_HELP)
    add_backend(p, default="auto")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, images and mask (0 … 2^32−1)")


def checked_options(args):
    """(device, height, width) from the options, or ValueError naming the bad one."""
    from spark_sparse.archs import check_arch
    from spark_sparse.devices import resolve_device
    from spark_sparse.masks import check_mask_ratio, patch_grid
    from spark_sparse.plan import PATCH_SIZE
    from spark_sparse.seeds import check_seed

    check_arch(args.arch, "--arch")
    check_mask_ratio(args.mask_ratio, "--mask-ratio")
    check_seed(args.seed)
    at_least(args.batch, "--batch")
    height, width = image_size(args.size)
    patch_grid(height, width, PATCH_SIZE)
    return resolve_device(args.device, 0), height, width


def run(args) -> int:
    import timm
    import torch

    import spark_sparse as ss
    from spark_sparse.flops import dense_macs
    from spark_sparse.masks import patch_grid
    from spark_sparse.routing import tuning_stats

    try:
        device, height, width = checked_options(args)
        torch.manual_seed(args.seed)
        model = timm.create_model(args.arch, pretrained=False).to(device).train()
        encoder = ss.sparsify(model, backend=args.backend)
    except (ValueError, ss.UnsupportedLayerError) as e:  # an option, or a backbone that cannot run sparse
        print(f"spark-sparse demo: {e}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reference = ss.MaskedDenseEncoder(model)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, height, width, generator=g).to(device)
    grid = patch_grid(height, width, encoder.patch_size)
    visible = ss.random_visible(args.batch, grid, args.mask_ratio, generator=g, device=device)
    print(f"{args.arch}: {args.batch}×3×{height}×{width}, mask ratio {args.mask_ratio} "
          f"({int(visible[0].sum())} of {visible[0].numel()} patches visible per image), backend {args.backend}")

    results = {}
    tuning_before = tuning_stats()["seconds"]
    for name, enc in (("sparse", encoder), ("masked-dense", reference)):
        x = images.clone().requires_grad_()
        start = time.perf_counter()
        outs = enc(x, visible)
        sum(o.square().mean() for o in outs).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[name] = (outs, {n: p.grad for n, p in enc.named_parameters()}, x.grad, time.perf_counter() - start)

    (s_out, s_grad, s_x, s_t), (r_out, r_grad, r_x, r_t) = results["sparse"], results["masked-dense"]
    print("stage  stride  channels  max|sparse-ref|/max|ref|")
    for i, (s, r, stride, ch) in enumerate(zip(s_out, r_out, encoder.strides, encoder.channels)):
        err = float((s - r).detach().abs().max() / r.detach().abs().max())
        print(f"{i + 1:>5}  {stride:>6}  {ch:>8}  {err:.2e}")
    worst = max((float((s_grad[n] - g_).detach().norm() / g_.norm().clamp_min(1e-30)), n) for n, g_ in r_grad.items())
    print(f"gradients: worst parameter {worst[1]} {worst[0]:.2e}, input "
          f"{float((s_x - r_x).norm() / r_x.norm()):.2e} (norm-relative)")

    sparse = encoder.macs(visible)
    dense = dense_macs(copy.deepcopy(model), args.batch, (height, width))
    print(f"encoder MACs: sparse {sparse / 1e9:.2f} G, masked-dense {dense / 1e9:.2f} G, "
          f"ratio {dense / max(sparse, 1):.2f}x (ideal 1/visible fraction = "
          f"{visible.numel() / max(int(visible.sum()), 1):.2f}x)")
    # on CUDA measured routing times each new layer shape in side trials during this call; on the CPU
    # this call is already one of its samples: a shape's first call runs the rules' choice, a second
    # call of the same shape in this forward another candidate's warm-up
    tuning = tuning_stats()["seconds"] - tuning_before
    print(f"one forward+backward (first call, not a benchmark): sparse {s_t - tuning:.2f} s, masked-dense "
          f"{r_t:.2f} s" + (f"; the sparse call also spent {tuning:.2f} s measuring its layers' routes, which "
                            f"later runs read from the routing cache" if tuning > 0 else ""))
    return 0
