"""Start from existing weights: turn a timm state dict or checkpoint (e.g. a supervised model to
continue pre-training), or SparK's published files (<arch>_1kpretrained_timm_style.pth,
<arch>_withdecoder_1kpretrained_spark_style.pth; official ConvNeXt key names are mapped to timm's)
into a pre-training checkpoint that `pretrain --resume CKPT`, `reconstruct` and `export` accept.

The checkpoint holds weights only: the encoder from FILE; the decoder, densify layers and mask
tokens from a SparK "withdecoder" file, else freshly initialised (seeded by --seed); step 0, no
optimizer state and no RNG state, so `pretrain --resume CKPT --out DIR` starts its optimizer,
schedule and data order fresh on these weights (with the same --arch and --decoder-width).
A mismatch with the architecture is an error that lists the missing, unexpected and mis-shaped
keys and names the architecture the weights look like."""
from __future__ import annotations

import sys

from spark_sparse.recipe import DECODER_WIDTH, DENSIFY_NORMS, INPUT_SIZE, MASK_RATIO

NAME = "import"
HELP = "timm or SparK weights in as a pre-training checkpoint"


def add_arguments(p):
    p.add_argument("file", metavar="FILE", help="weights: .safetensors, or a torch.save file (.pth/.pt/.bin)")
    p.add_argument("--arch", default=None,
                   help="timm model name (default: the file's own record, else the architecture its weights fit)")
    p.add_argument("--out", required=True, metavar="CKPT", help="the checkpoint to write")
    p.add_argument("--decoder-width", type=int, default=None,
                   help=f"LightDecoder width of a fresh decoder (default {DECODER_WIDTH}; a SparK withdecoder file "
                        f"fixes it)")
    p.add_argument("--densify-norm", choices=list(DENSIFY_NORMS), default=None,
                   help="densify norm of a fresh head (default auto; a SparK withdecoder file fixes it)")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help=f"recorded mask ratio (default: the file's record, else SparK's {MASK_RATIO})")
    p.add_argument("--input-size", type=int, default=None,
                   help=f"recorded input size (default: the file's record, else SparK's {INPUT_SIZE})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the fresh decoder / densify / mask-token weights (0 … 2^32−1)")
    p.add_argument("--trust-file", action="store_true",
                   help="allow arbitrary pickled Python objects in FILE (e.g. timm training checkpoints that store "
                        "their argparse arguments); only for files from a source you trust")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists (never FILE itself)")


def run(args) -> int:
    from spark_sparse.archs import check_arch
    from spark_sparse.io.checkpoint import save_atomic
    from spark_sparse.files import check_output
    from spark_sparse.seeds import check_seed
    from spark_sparse.io.imports import checkpoint_from_import
    from spark_sparse.spark_format import read_weights
    from spark_sparse.weights import WeightsError

    try:
        if args.arch is not None:
            check_arch(args.arch, "--arch")
        check_seed(args.seed)
        check_output(args.out, inputs=[args.file], force=args.force)
        imported = read_weights(args.file, trust=args.trust_file)
        payload = checkpoint_from_import(imported, args.arch, decoder_width=args.decoder_width,
                                         mask_ratio=args.mask_ratio, densify_norm=args.densify_norm,
                                         input_size=args.input_size, seed=args.seed)
        save_atomic(payload, args.out)
    except (WeightsError, ValueError) as e:  # WeightsError: the file; ValueError: an option or --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    info, cfg = payload["imported_from"], payload["model_config"]
    encoder_tensors = sum(1 for k in payload["model"] if k.startswith("encoder."))
    print(f"read {args.file}: {info['kind']}")
    if args.arch is None and "arch" not in info["recorded"]:
        print(f"  architecture recognised from the weights: {payload['arch']}")
    print(f"wrote {args.out}: {payload['arch']} encoder ({encoder_tensors} tensors), decoder {info['decoder']} "
          f"(width {cfg['decoder_width']}, densify norm {cfg['densify_norm']}), mask ratio {cfg['mask_ratio']}, "
          f"input size {cfg['input_size']}")
    if info["dropped"]:
        shown = ", ".join(info["dropped"][:6]) + (" …" if len(info["dropped"]) > 6 else "")
        print(f"  left out: {shown} (classifier head / unused buffers)")
    if info["recorded"]:
        print("  the file records: " + ", ".join(f"{k}={v}" for k, v in info["recorded"].items()))
    print(f"  continue pre-training: spark-sparse pretrain --resume {args.out} --arch {payload['arch']} "
          f"--decoder-width {cfg['decoder_width']} --out DIR   (optimizer and schedule start fresh)")
    return 0
