"""The ``spark-sparse pretrain`` options, their defaults, and the values derived from them.

Defaults make the no-argument run a few-minute CPU job on the embedded photographs (a ResNet-18
at 96 px, batch 16, 2 epochs of 18 steps). The optimisation recipe itself (LAMB, lr scaling, schedules,
weight decay, clipping, drop path, augmentation, decoder) is SparK's at every setting; for
ImageNet pass SparK's scale: ``--arch resnet50 --input-size 224 --batch-size 4096 --epochs 1600
--warmup-epochs 40`` (see the README).
"""
from __future__ import annotations

import argparse
import math
import os

from ..archs import check_arch
from ..checks import at_least
from ..backends import BACKEND_NAMES
from ..choices import AMP_CHOICES, BACKEND_HELP, ROUTING_HELP, ROUTING_MODES, SHARED_CPU_HELP
from ..recipe import (BASE_LR, CLIP, DECODER_WIDTH, DENSIFY_NORMS, MASK_RATIO, WEIGHT_DECAY, WEIGHT_DECAY_END,
                      default_drop_path)
from ..seeds import check_seed

# Peak lr of the no-argument demo run: SparK's on ImageNet (2e-4 × 4096 / 256).
DEMO_PEAK_LR = BASE_LR * 4096 / 256

# --encoder's values (the command line's spelling) → the model's encoder_kind (spark.ENCODER_KINDS)
ENCODER_KINDS = {"sparse": "sparse", "masked-dense": "masked_dense"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--data", default=None, metavar="DIR",
                      help="folder of images (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp), flat or in class "
                           "sub-folders, searched recursively (ImageNet: pass its train/, not the folder holding "
                           "train/ and val/); omitted: the embedded data set, real photographs shipped with "
                           "scikit-image cut into 288 crops")
    data.add_argument("--input-size", type=int, default=96,
                      help="training crop size in pixels, a multiple of 32 (SparK on ImageNet: 224)")
    data.add_argument("--workers", type=int, default=None,
                      help="data-loading processes per training process (default: chosen with the compute "
                           "threads to fit the cores this process was given; logged at the start)")
    data.add_argument("--data-timeout", type=float, default=600,
                      help="seconds to wait for one batch from the data-loading processes before the run stops "
                           "with an error (a read stuck on a network file system would otherwise hang it); "
                           "0: wait forever")

    model = p.add_argument_group("model")
    model.add_argument("--arch", default="resnet18",
                       help="timm backbone: resnet18 … resnet200, resnet*d, convnext_* (SparK's main: resnet50)")
    model.add_argument("--encoder", default="sparse", choices=list(ENCODER_KINDS),
                       help="sparse: only visible patches are computed; masked-dense: SparK's reference "
                            "(dense convs, masked sites zeroed), same numbers at full cost")
    model.add_argument("--backend", default="auto", choices=list(BACKEND_NAMES), help=BACKEND_HELP)
    model.add_argument("--routing", default=None, choices=list(ROUTING_MODES), help=ROUTING_HELP)
    model.add_argument("--drop-path", type=float, default=None,
                       help="stochastic depth rate (default: SparK's per model, 0.05/0.08/0.1/0.15 for "
                            "ResNet-50/101/152/200, 0.2/0.3/0.4 for ConvNeXt-S/B/L, else 0)")
    model.add_argument("--mask-ratio", type=float, default=MASK_RATIO, help="fraction of 32×32 patches hidden")
    model.add_argument("--decoder-width", type=int, default=DECODER_WIDTH,
                       help="LightDecoder width at stride 32, halved at every upsampling step")
    model.add_argument("--decoder-checkpointing", action="store_true",
                       help="recompute the decoder's three highest-resolution blocks in the backward pass instead "
                            "of keeping their activations (most of the decoder's activation memory, for about 3/5 "
                            "of one more decoder forward per step; same numbers)")
    model.add_argument("--encoder-checkpointing", action="store_true",
                       help="the same for the sparse encoder's stem and residual blocks (about one more encoder "
                            "forward per step; same numbers); with --decoder-checkpointing the lowest peak memory")
    model.add_argument("--densify-norm", default="auto", choices=list(DENSIFY_NORMS),
                       help="norm of the active sites before densifying: auto = BatchNorm for BatchNorm "
                            "backbones (ResNets), LayerNorm otherwise (ConvNeXts)")

    opt = p.add_argument_group("optimisation (SparK's recipe)")
    opt.add_argument("--batch-size", type=int, default=16,
                     help="global batch size, split evenly over the processes (SparK on ImageNet: 4096)")
    opt.add_argument("--epochs", type=float, default=2, help="training epochs (SparK on ImageNet: 1600)")
    opt.add_argument("--steps", type=int, default=None,
                     help="stop after this many optimiser steps in all (default: epochs × steps per epoch); "
                          "the schedules span these steps")
    opt.add_argument("--warmup-epochs", type=float, default=0.5, help="linear lr warm-up (SparK on ImageNet: 40)")
    opt.add_argument("--base-lr", type=float, default=BASE_LR, help="peak lr = base-lr × batch-size / 256")
    opt.add_argument("--lr", type=float, default=None,
                     help="peak lr, overriding --base-lr scaling (default without --data: %g, SparK's ImageNet "
                          "peak, so that the few-minute demo visibly learns at its batch of 16)" % DEMO_PEAK_LR)
    opt.add_argument("--wd", type=float, default=WEIGHT_DECAY, help="weight decay at the start (cosine to --wd-end)")
    opt.add_argument("--wd-end", type=float, default=WEIGHT_DECAY_END, help="weight decay at the end")
    opt.add_argument("--clip", type=float, default=CLIP, help="clip the global gradient norm (<= 0: off)")
    opt.add_argument("--opt", default="lamb", choices=["lamb", "adamw"],
                     help="optimiser; betas (0.9, 0.95) for ResNets and (0.9, 0.999) for ConvNeXts, as SparK")
    opt.add_argument("--amp", default="auto", choices=list(AMP_CHOICES),
                     help="mixed precision (autocast; the loss stays fp32): auto = bf16 on CUDA GPUs that support "
                          "it (else fp16), bf16 on CPUs with native bf16 (AVX-512 BF16 or AMX), else off")

    run = p.add_argument_group("run")
    run.add_argument("--out", default=os.path.join("runs", "pretrain"), metavar="DIR",
                     help="output folder: checkpoints/, tensorboard/, vis/ (reconstruction PNGs), metrics.jsonl")
    run.add_argument("--resume", default="auto", metavar="auto|none|FILE",
                     help="auto: continue from the newest valid checkpoint of this --out's run (a fresh start when "
                          "there is none; refused when all of them are unreadable); none: start fresh (refused if "
                          "--out holds checkpoints); or a checkpoint file (refused if --out holds another run's "
                          "checkpoints, or newer ones of the same run). Resuming with another --batch-size or data "
                          "set is refused; the other options may change (with a warning where the run then computes "
                          "something else)")
    run.add_argument("--force", action="store_true",
                     help="go ahead where a run would be refused: share --out with another run's checkpoints "
                          "(they are kept and never pruned, and that run's metrics.jsonl, tensorboard/ and vis/ "
                          "move to previous-runs/<its run id>/), or resume with another --batch-size or data set")
    run.add_argument("--ckpt-every", type=int, default=500,
                     help="also save every N steps (0: only at the end of each epoch and of the run)")
    run.add_argument("--keep-ckpts", type=int, default=3,
                     help="checkpoints kept: the newest this run wrote (<= 0: all); other runs' files are never pruned")
    run.add_argument("--log-every", type=int, default=10,
                     help="print a log line every N steps, and time that step's phases (data, encoder, densify, "
                          "decoder, loss, backward, optimizer) into TensorBoard's step_ms/")
    run.add_argument("--vis-every", type=int, default=0,
                     help="also save a reconstruction grid every N steps (always: after the first step, at the "
                          "end of each epoch and of the run)")
    run.add_argument("--vis-images", type=int, default=8, help="images in a reconstruction grid")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the weights' initialisation, the data order, augmentation and masks (0 … 2^32−1)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (under torchrun: the local rank's GPU)")
    run.add_argument("--keep-freed-memory", default=True, action=argparse.BooleanOptionalAction,
                     help="CPU training: let glibc keep freed memory for reuse (no mmap, no trim), so a step does "
                          "not pay page faults to map its large tensors again every step (the no-argument run: "
                          "9–20 %% more images/s in four paired runs on a 2-core CPU, same numbers); the process keeps "
                          "its peak heap. --no-keep-freed-memory leaves malloc as the system set it. Only glibc has "
                          "these settings; GPU runs leave malloc alone")
    run.add_argument("--shared-cpu", action="store_true", help=SHARED_CPU_HELP)
    run.add_argument("--progress", default=None, action=argparse.BooleanOptionalAction,
                     help="progress bar (default: when stderr is a terminal)")


def defaults() -> argparse.Namespace:
    """Every option of ``spark-sparse pretrain`` at its default: the one source of the defaults, for
    the command line and for a Trainer built from the API alike."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return parser.parse_args([])


def with_defaults(args) -> argparse.Namespace:
    """A copy of ``args`` (a Namespace, or any object with attributes) with every option it does not
    set at the command line's default; ``args`` itself is left as it is."""
    filled = defaults()
    unknown = sorted(k for k in vars(args) if not hasattr(filled, k) and k not in ("command", "_run"))
    if unknown:  # a misspelt option would otherwise train with the default, silently
        raise ValueError(f"unknown pretrain option(s) {', '.join(unknown)}; the options are "
                         f"{', '.join(sorted(vars(filled)))}")
    for key, value in vars(args).items():
        setattr(filled, key, value)
    return filled


def check_args(args) -> None:
    """Clear errors for values that cannot work, before anything is built."""
    # imported here, not at the top: building the parser (--help, a mistyped option) must not load torch
    from ..masks import check_mask_ratio, check_patches_both_ways, patch_grid
    from ..plan import PATCH_SIZE
    check_arch(args.arch, "--arch")
    if args.encoder not in ENCODER_KINDS:
        raise ValueError(f"--encoder {args.encoder!r}: choose one of {', '.join(ENCODER_KINDS)}")
    if args.data is not None and not args.data.strip():
        raise ValueError("--data is empty (an unset variable?): pass a folder of images, or omit --data for the "
                         "embedded photographs")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a file; pass a folder (it holds the run's checkpoints and logs)")
    patch_grid(args.input_size, args.input_size, PATCH_SIZE, "--input-size")
    at_least(args.batch_size, "--batch-size")
    check_mask_ratio(args.mask_ratio, "--mask-ratio", allow_zero=False)
    check_patches_both_ways(args.input_size // PATCH_SIZE, args.mask_ratio,
                            f"--mask-ratio at --input-size {args.input_size}:")
    check_seed(args.seed)
    for name in ("vis_images", "log_every"):
        at_least(getattr(args, name), _option(name))
    for name in ("vis_every", "ckpt_every"):
        at_least(getattr(args, name), _option(name), 0, "0: off")
    at_least(args.workers, "--workers", 0)
    at_least(args.data_timeout, "--data-timeout", 0, "seconds; 0: wait forever")
    if not args.epochs > 0 and not args.steps:
        raise ValueError(f"--epochs must be > 0 (or give --steps), got {args.epochs}")
    at_least(args.steps, "--steps")
    at_least(args.warmup_epochs, "--warmup-epochs", 0)
    # written as "not (valid)" so that NaN is refused too
    for name in ("lr", "base_lr"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"{_option(name)} must be > 0 (a learning rate), got {value}")
    for name in ("wd", "wd_end"):
        at_least(getattr(args, name), _option(name), 0, "a weight decay")
    if args.drop_path is not None and not 0 <= args.drop_path < 1:
        raise ValueError(f"--drop-path must be in [0, 1) (the probability that a residual block is skipped), "
                         f"got {args.drop_path}")
    if math.isnan(args.clip):
        raise ValueError("--clip must be a number (<= 0: no clipping), got nan")


def _option(name: str) -> str:
    """The command-line spelling of an argument's attribute name (``log_every`` → ``--log-every``)."""
    return "--" + name.replace("_", "-")


def peak_lr(args, global_batch: int) -> float:
    """SparK's linear scaling, except on the embedded demo data where its batch of 16 would give
    1.25e-5 — a rate at which 36 LAMB steps move no weight visibly."""
    if args.lr is not None:
        return args.lr
    if args.data is None:
        return DEMO_PEAK_LR
    return args.base_lr * global_batch / 256


def drop_path(args) -> float:
    return default_drop_path(args.arch) if args.drop_path is None else args.drop_path


def plain_args(args) -> dict:
    """The arguments as plain values (for checkpoints)."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "force")
            and (v is None or isinstance(v, (str, int, float, bool, list, tuple)))}
