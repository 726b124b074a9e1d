"""Measure the sparse encoder against SparK's masked-dense reference and the plain dense model, side
by side in one process: encoder forward, encoder forward+backward and the whole SparK training step,
interleaved repeats after warm-up (median), peak memory, exact MACs and the ideal ratio
1/(visible fraction). Writes results.json, results.md and PNG plots into --out, and optionally
the README's headline table (--readme). Models that cannot be sparsified yet are reported as
skipped, with the reason. Random weights: nothing is downloaded. Start with --quick (a minute or two);
--profile-only --profile-model resnet50 times every sparse layer against its dense twin; the
command of the committed CPU results is in benchmarks/results/README.md."""
from __future__ import annotations

import argparse
import shlex
import sys

from spark_sparse.choices import SHARED_CPU_HELP
from spark_sparse.commands.options import SIZE_HELP, add_backend, add_routing, image_size

NAME = "bench"
HELP = "FLOPs, speed and memory: sparse vs masked-dense vs plain dense"

S = argparse.SUPPRESS  # unset options fall back to the defaults (or to --quick's values)


def add_arguments(p):
    from spark_sparse.benchmarks.config import DEFAULT_MASK_RATIOS, DEFAULT_MODELS, DENSE_FORMATS, MODES
    from spark_sparse.choices import AMP_DTYPES, PRECISIONS
    from spark_sparse.recipe import DECODER_WIDTH, INPUT_SIZE, MASK_RATIO
    p.add_argument("--quick", action="store_true",
                   help="tiny run for CI, checks that everything runs and the outputs are valid, measures nothing "
                        "useful: --models resnet18 convnext_atto --size 64 --batch 2 --mask-ratios 0.5 --warmup 0 "
                        "--repeats 1 --dense-format contiguous --decoder-width 32 --memory-modes fwd_bwd "
                        "--profile-repeats 1 and no profile warm-up (options given beside it win)")
    p.add_argument("--models", nargs="+", default=S, metavar="NAME",
                   help=f"timm model names (any timm ResNet/ConvNeXt; default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--mask-ratios", nargs="+", type=float, default=S, metavar="R",
                   help="fractions of patches hidden, each in [0, 1) "
                        f"(default: {' '.join(map(str, DEFAULT_MASK_RATIOS))})")
    p.add_argument("--batch", nargs="+", type=int, default=S, metavar="B", help="batch sizes (default: 16)")
    p.add_argument("--size", nargs="+", type=int, default=S, metavar="PX",
                   help=f"{SIZE_HELP} (default: {INPUT_SIZE})")
    p.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=S,
                   help="devices (default: cpu, and cuda when available)")
    p.add_argument("--dtypes", nargs="+", choices=list(PRECISIONS), default=S,
                   help="precisions; bf16/fp16 run under autocast on fp32 weights (default: fp32 on cpu; "
                        "fp32 bf16 fp16 on cuda)")
    add_backend(p, "--backends", nargs="+", default=S,
                help="sparse conv backends to measure (default: every available one, and auto)")
    add_backend(p, "--step-backends", nargs="+", default=S,
                help="sparse backends also run in the whole step, which is mostly the dense decoder "
                     "(default: auto only)")
    add_routing(p, default=S)
    p.add_argument("--step-dtypes", nargs="+", choices=list(AMP_DTYPES), default=S,
                   help="also run the sparse whole step under these autocast dtypes, beside its own dtype "
                        "(e.g. bf16 beside fp32, in one run)")
    p.add_argument("--decoder-checkpointing", action="store_true",
                   help="also run the sparse whole step with decoder checkpointing, as '<contender> ckpt' "
                        "(peak memory and time cost)")
    p.add_argument("--encoder-checkpointing", action="store_true",
                   help="also run the sparse whole step with encoder and decoder checkpointing, as "
                        "'<contender> ckpt-all' (peak memory and time cost)")
    p.add_argument("--no-published", action="store_true",
                   help="leave out the step of SparK as published (masked-dense encoder, NCHW head, fp32, eager)")
    p.add_argument("--step-contenders", nargs="+", default=S, metavar="NAME",
                   help="run only these contenders in the whole step (e.g. 'sparse[auto]' 'sparse[auto] bf16' "
                        "spark-published; default: all)")
    p.add_argument("--background-load", nargs="+", type=int, default=S, metavar="N",
                   help="measure each case with N busy processes beside it, once per N given (e.g. 0 2: quiet "
                        "and with two; default: 0)")
    p.add_argument("--head-variants", action="store_true",
                   help="also time the dense head's exact alternatives (transposed conv: torch's / its backward as "
                        "convolutions (ours) / four phase convs / sub-pixel; decoder NCHW / channels-last, each "
                        "backward / bf16) with their fp32 error vs fp64")
    p.add_argument("--compile-head", action="store_true",
                   help="with --head-variants: a torch.compile-d decoder too (compile time reported)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=S,
                   help="fwd: encoder forward; fwd_bwd: encoder forward+backward; step: whole SparK training "
                        "step (default: all three)")
    p.add_argument("--warmup", type=int, default=S, help="untimed calls of each contender first (default: 2)")
    p.add_argument("--repeats", type=int, default=S, help="timed calls of each contender, interleaved (default: 5)")
    p.add_argument("--threads", type=int, default=S, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--dense-format", choices=list(DENSE_FORMATS), default=S,
                   help="memory format of the dense contenders; auto times both and keeps the faster (default: auto)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--memory-modes", nargs="+", choices=list(MODES), default=S,
                   help="modes whose peak memory is measured (default: every timed mode)")
    p.add_argument("--decoder-width", type=int, default=S,
                   help=f"LightDecoder width of the whole-step mode (default: {DECODER_WIDTH}, SparK's)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA for fp32 (off by default: fp32 means fp32)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="let glibc keep freed memory for reuse (no mmap, no trim: no page faults on a step's "
                        "large tensors), for every contender alike; the default measures with malloc as the "
                        "system set it")
    p.add_argument("--shared-cpu", action="store_true", help=SHARED_CPU_HELP + "; for every contender alike")
    p.add_argument("--seed", type=int, default=S, help="seed of weights, images and masks (default: 0)")
    p.add_argument("--profile-model", default=S, metavar="NAME",
                   help="model of the per-layer profile; 'none' to skip (default: the first model that ran)")
    p.add_argument("--profile-ratio", type=float, default=S,
                   help=f"mask ratio of the per-layer profile (default: {MASK_RATIO})")
    p.add_argument("--profile-batch", type=int, default=S,
                   help="batch of the per-layer profile (default: the first --batch)")
    p.add_argument("--profile-repeats", type=int, default=S, help="repeats per layer (default: 3)")
    p.add_argument("--profile-only", action="store_true", help="only the per-layer profile, no sweep")
    p.add_argument("--out", default="bench_results", help="folder for results.json, results.md and the plots")
    p.add_argument("--readme", default=None, metavar="PATH",
                   help="also rewrite the generated headline block of this README (between its bench:headline "
                        "markers)")
    p.add_argument("--render", default=None, metavar="RESULTS_JSON",
                   help="measure nothing: regenerate results.md, the plots (and --readme) in --out from an "
                        "existing results.json")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--force", action="store_true",
                   help="overwrite the results (results.json, results.md, plots) already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


FIELDS = {"models": "models", "mask_ratios": "mask_ratios", "batch": "batches", "devices": "devices",
          "dtypes": "dtypes", "backends": "backends", "modes": "modes", "warmup": "warmup", "repeats": "repeats",
          "threads": "threads", "dense_format": "dense_format", "seed": "seed", "profile_ratio": "profile_ratio",
          "profile_batch": "profile_batch", "profile_repeats": "profile_repeats",
          "decoder_width": "decoder_width", "memory_modes": "memory_modes", "step_backends": "step_backends",
          "step_dtypes": "step_dtypes", "step_contenders": "step_contenders", "background_load": "background_load",
          "routing": "routing"}


def build_config(args):
    from spark_sparse.benchmarks.config import BenchConfig
    cfg = BenchConfig.quick_config() if args.quick else BenchConfig()
    for arg, field in FIELDS.items():
        if hasattr(args, arg):
            value = getattr(args, arg)
            setattr(cfg, field, list(dict.fromkeys(value)) if isinstance(value, list) else value)  # once each
    if hasattr(args, "size"):
        cfg.image_size = image_size(args.size)
    if hasattr(args, "profile_model"):
        cfg.profile_model = None if args.profile_model.lower() == "none" else args.profile_model
    cfg.memory = not args.no_memory
    cfg.decoder_checkpointing = args.decoder_checkpointing
    cfg.encoder_checkpointing = args.encoder_checkpointing
    cfg.published = not args.no_published
    cfg.head_variants = args.head_variants
    cfg.compile_head = args.compile_head
    cfg.tf32 = args.tf32
    cfg.keep_freed_memory = args.keep_freed_memory
    cfg.profile_only = args.profile_only
    cfg.note = args.note
    cfg.command = command_line(args)
    cfg.validate()
    check_combinations(args, cfg)
    return cfg


# options that change only the whole step / only the per-layer profile / that --render reads
STEP_ONLY = ("step_dtypes", "decoder_checkpointing", "encoder_checkpointing", "no_published", "step_contenders",
             "step_backends")
PROFILE_ONLY = ("profile_ratio", "profile_batch", "profile_repeats")
RENDER_OPTIONS = ("render", "out", "readme", "no_plots", "force", "no_progress")


def given(args, name: str) -> bool:
    """Whether the user typed option ``name`` (unset options are absent, or False / None / '')."""
    value = getattr(args, name, None)
    return value is not None and value is not False and value != ""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_combinations(args, cfg) -> None:
    """Options that would be silently ignored beside the others are refused (ValueError naming them)."""
    def refuse(names, why):
        typed = [flag(n) for n in names if given(args, n)]
        if typed:
            raise ValueError(f"{', '.join(typed)} {'has' if len(typed) == 1 else 'have'} no effect {why}")
    if "step" not in cfg.modes:
        refuse(STEP_ONLY, f"without step in --modes (only the whole step uses it; --modes is {' '.join(cfg.modes)})")
        if not cfg.head_variants:
            refuse(["decoder_width"], "without step in --modes or --head-variants")
    if given(args, "memory_modes"):
        extra = [m for m in args.memory_modes if m not in cfg.modes]
        if extra:
            raise ValueError(f"--memory-modes {' '.join(extra)}: not among --modes ({' '.join(cfg.modes)}); peak "
                             f"memory is measured in timed modes only")
        if args.no_memory:
            refuse(["memory_modes"], "with --no-memory")
    if not cfg.head_variants:
        refuse(["compile_head"], "without --head-variants (it adds a compiled decoder to them)")
    if cfg.profile_model is None:
        refuse(["profile_only"] + list(PROFILE_ONLY), "with --profile-model none (no per-layer profile)")
    if cfg.profile_only:
        refuse(["readme"], "with --profile-only (the README's table needs the sweep)")


def check_render_options(args) -> None:
    """--render measures nothing: a measuring option beside it would be silently ignored."""
    ignored = [flag(k) for k in vars(args) if not k.startswith("_") and k != "command" and k not in RENDER_OPTIONS
               and given(args, k)]
    if ignored:
        raise ValueError(f"--render measures nothing: {', '.join(ignored)} would be ignored; drop "
                         f"{'it' if len(ignored) == 1 else 'them'} (the results keep the settings they were "
                         f"measured with)")


def command_line(args) -> str:
    """The command as typed (options in a canonical order), for the results' README."""
    words = ["spark-sparse", NAME]
    for key, value in vars(args).items():
        if key.startswith("_") or key in ("command", "force") or value is None or value is False or value == "":
            continue
        if value is True:
            words.append(flag(key))
        elif isinstance(value, list):
            words += [flag(key)] + [str(v) for v in value]
        elif key != "out" or value != "bench_results":
            words += [flag(key), str(value)]
    return shlex.join(words)


def load_results(path: str) -> dict:
    import json

    from spark_sparse.benchmarks import schema
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        schema.validate(doc)
    except (OSError, ValueError) as e:
        raise ValueError(f"--render {path}: not a readable results.json of spark-sparse bench ({e})") from e
    if doc.get("partial"):
        print(f"warning: {path} is from a run that did not finish", file=sys.stderr)
    return doc


def check_outputs(args, plots=()) -> None:
    """Files already in --out are another run's (or the user's): refused before measuring anything,
    unless --force. Checked for every file the run may write: results.json, results.md and the
    ``plots`` (re-rendering results.json in place rewrites the same document, so it needs --force too)."""
    import os

    from spark_sparse.files import check_output
    if not args.out:
        raise ValueError("--out is empty; give the folder for results.json, results.md and the plots")
    for name in ["results.json", "results.md", *plots]:
        check_output(os.path.join(args.out, name), force=args.force, what="--out")


def run(args) -> int:
    from spark_sparse.benchmarks import markdown, readme, report, runner
    try:  # options first, then the files: nothing is measured or written unless every check passes
        if args.render:
            check_render_options(args)
            cfg, doc = None, load_results(args.render)
        else:
            cfg, doc = build_config(args), None
        if args.readme:
            readme.check_readme(args.readme, args.note if doc is None else doc.get("note") or "", doc)
        plots = []
        if not args.no_plots:
            plots = report.plot_names(cfg) if doc is None else [name for name, _ in report.plots_of(doc)]
        check_outputs(args, plots)
    except (ValueError, ImportError) as e:
        print(f"spark-sparse bench: {e}", file=sys.stderr)
        return 2
    if doc is None:
        doc = runner.run(cfg, progress=not args.no_progress, checkpoint=lambda d: report.write_partial(d, args.out))
    written = report.write_outputs(doc, args.out, plots=not args.no_plots)
    failed = nothing_measured(doc, cfg)
    if args.readme and not failed:
        try:  # checked before measuring; a README changed meanwhile still ends in one line
            readme.update_readme(args.readme, doc, args.out)
            written.append(args.readme)
        except (OSError, ValueError) as e:
            failed = str(e)
    if doc["results"]:
        print(markdown.headline_table(doc))
    print_routes(doc)
    for s in doc["skipped"]:
        print(f"skipped {s['model']}: {s['reason']}")
    print("wrote " + ", ".join(written))
    if failed:
        print(f"spark-sparse bench: {failed}" + (f"; --readme {args.readme} left as it was" if args.readme else ""),
              file=sys.stderr)
        return 1
    return 0


def nothing_measured(doc: dict, cfg) -> str:
    """Why a run measured nothing ('' when it measured something): such a run must not exit 0."""
    if cfg is None:
        return ""  # --render measures nothing by design
    if cfg.profile_only:
        if any("layers" in p for p in doc["profiles"]):
            return ""
        why = "; ".join(f"{p['model']}: {p['skipped']}" for p in doc["profiles"] if "skipped" in p)
        return f"nothing was measured: the per-layer profile was skipped ({why or 'no model'})"
    if doc["results"]:
        return ""
    why = "; ".join(f"{s['model']} ({s['device']} {s['dtype']}): {s['reason']}" for s in doc["skipped"])
    return f"nothing was measured: every case was skipped ({why or 'no case'}); results.json records why"


def print_routes(doc: dict) -> None:
    """How the headline sparse contender ran its convs in each case, what tuning them cost, and the
    route of every conv that had a choice (with the router's reason) in the first case."""
    from spark_sparse.benchmarks.routes import summary
    shown = False
    for rec in doc["results"]:
        if "tuning" not in rec:
            continue
        t, layers = rec["tuning"], rec["routes"]["layers"]
        over = f" over {t['calls']} forward+backward calls" if "calls" in t else ""
        print(f"routes of {rec['routes']['contender']}, {rec['model']} {rec['device']} {rec['dtype']} batch "
              f"{rec['batch']} ({doc.get('routing', '?')} routing): {summary(layers)}; tuning {t['tuning_s']:.2f} s "
              f"({t['tuned_layers']} layer shapes measured{over}, {t['cached_layers']} read from the cache)")
        if not shown:
            shown = True
            width = max((len(row["path"]) for row in layers), default=0)
            for row in layers:
                if row["choice"]:
                    print(f"  {row['path']:<{width}}  {row['implementation']:<16} {row['reason']}")
