"""Write a pre-training checkpoint's encoder as a timm state dict (safetensors or .pth), for
fine-tuning in a plain dense timm model:

  model = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=FILE), num_classes=N)

or model.load_state_dict(weights, strict=False), which leaves exactly the new classifier head (for
ConvNeXt also the head's norm) missing. BatchNorm running statistics are the ones the sparse encoder
accumulated over visible sites during pre-training.

--verify then rebuilds the dense timm model from FILE (through timm's own loader) and the sparse
encoder from the checkpoint, runs both on random images and masks in eval mode, and prints the
largest error per stage on visible sites; exit status 1 when a stage exceeds --tolerance, 2 when
the checkpoint cannot be used."""
from __future__ import annotations

import sys

from spark_sparse.checks import at_least

NAME = "export"
HELP = "encoder weights out as a timm state dict (safetensors/pth), optionally verified"


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CKPT", help="a pre-training checkpoint (spark-sparse pretrain or import)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the weights")
    p.add_argument("--format", choices=["safetensors", "pth"], default=None,
                   help="file format; must fit the name, since timm picks its loader by it (default: safetensors "
                        "for *.safetensors, a torch.save state dict (pth) for any other name)")
    p.add_argument("--verify", action="store_true",
                   help="check that the dense timm model built from FILE equals the sparse encoder on visible sites")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted per-stage error, max|dense-sparse| / max|dense| on visible sites")
    p.add_argument("--verify-batch", type=int, default=2, help="random images used by --verify")
    p.add_argument("--verify-size", type=int, default=None,
                   help="their size in pixels (default: the checkpoint's input size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images and masks of --verify (0 … 2^32−1)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists (never the checkpoint itself)")


def check_verify_options(args) -> None:
    """The --verify-* values, refused before anything is written."""
    from spark_sparse.plan import PATCH_SIZE
    from spark_sparse.seeds import check_seed
    at_least(args.verify_batch, "--verify-batch")
    if args.verify_size is not None and (args.verify_size <= 0 or args.verify_size % PATCH_SIZE):
        raise ValueError(f"--verify-size must be a positive multiple of {PATCH_SIZE} (the backbone stride), got "
                         f"{args.verify_size}")
    at_least(args.tolerance, "--tolerance", 0)
    check_seed(args.seed)


def run(args) -> int:
    from spark_sparse import export as ex
    from spark_sparse.io.checkpoint import CheckpointError, load
    from spark_sparse.files import check_output
    from spark_sparse.weights import WeightsError

    try:
        check_verify_options(args)
        check_output(args.out, inputs=[args.checkpoint], force=args.force)
        payload = load(args.checkpoint)
        if args.verify:  # before writing: a verification that could compare nothing is refused first
            ex.verify_setting(payload, args.verify_size)
        fmt = ex.format_for(args.out, args.format)
        state = ex.export(payload, args.checkpoint, args.out, fmt)
    except (CheckpointError, WeightsError, ValueError) as e:  # OutputError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    arch = payload["arch"]
    print(f"wrote {args.out} ({fmt}): {arch} encoder, {len(state)} tensors, "
          f"{sum(v.numel() for v in state.values() if v.is_floating_point()) / 1e6:.2f} M values, "
          f"from step {payload.get('step')} of {args.checkpoint}")
    print(f"  fine-tune: timm.create_model({arch!r}, pretrained=True, "
          f"pretrained_cfg_overlay=dict(file={args.out!r}), num_classes=N)")
    if not args.verify:
        return 0
    try:
        errors = ex.verify(payload, args.checkpoint, args.out, batch=args.verify_batch, size=args.verify_size,
                           seed=args.seed)
    except (CheckpointError, WeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("verify: dense timm model (from the file, SparK's masking) vs sparse encoder (from the checkpoint), "
          "eval mode, visible sites")
    print("stage  stride  channels  max|dense-sparse|/max|dense|")
    failed = False
    for i, e in enumerate(errors):
        bad = not e.error <= args.tolerance  # NaN fails too
        failed |= bad
        print(f"{i + 1:>5}  {e.stride:>6}  {e.channels:>8}  {e.error:.2e}{'  > tolerance' if bad else ''}")
    if failed:
        print(f"verify FAILED: error above the tolerance {args.tolerance:g}; the file does not reproduce the "
              f"pre-trained encoder", file=sys.stderr)
        return 1
    print(f"verify passed (tolerance {args.tolerance:g})")
    return 0
