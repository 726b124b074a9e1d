"""What one benchmark run measures: models, mask ratios, batches, devices, dtypes, backends, modes.

A plain dataclass, built from the command line (``spark_sparse/commands/bench.py``) or by hand, so
the runner never reads ``argparse`` objects and tests can build small configurations directly.
Free of torch at import, so that ``spark-sparse bench --help`` answers at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from spark_sparse.checks import at_least
from spark_sparse.choices import PRECISIONS
from spark_sparse.cpus import usable_cores
from spark_sparse.recipe import DECODER_WIDTH, INPUT_SIZE, MASK_RATIO

DEFAULT_MODELS = ("resnet50", "resnet101", "convnext_tiny", "convnext_small", "convnext_base")
DEFAULT_MASK_RATIOS = (0.0, 0.25, 0.5, MASK_RATIO, 0.75, 0.9)
MODES = ("fwd", "fwd_bwd", "step")
MODE_TITLES = {"fwd": "encoder forward", "fwd_bwd": "encoder forward+backward",
               "step": "whole SparK step (encoder + densify + decoder + loss + backward + optimizer)"}
DENSE_FORMATS = ("auto", "contiguous", "channels_last")
PUBLISHED = "spark-published"  # the step contender of SparK as published (see case.py)

# --quick: small enough for CI (2 cores, well under 40 s with the test around it); it checks that
# every code path runs and that the outputs are valid, not the speed of anything.
QUICK = dict(models=["resnet18", "convnext_atto"], mask_ratios=[0.5], batches=[2], image_size=(64, 64),
             warmup=0, repeats=1, dense_format="contiguous", decoder_width=32, memory_modes=["fwd_bwd"],
             profile_warmup=0, profile_repeats=1)  # the profile: of the first model that ran, as without --quick


@dataclass
class BenchConfig:
    models: List[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    mask_ratios: List[float] = field(default_factory=lambda: list(DEFAULT_MASK_RATIOS))
    batches: List[int] = field(default_factory=lambda: [16])
    image_size: Tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)
    devices: List[str] = field(default_factory=lambda: default_devices())
    dtypes: Optional[List[str]] = None          # None: fp32 on CPU; fp32, bf16, fp16 on CUDA
    backends: Optional[List[str]] = None        # None: every available backend, and 'auto'
    modes: List[str] = field(default_factory=lambda: list(MODES))
    warmup: int = 2
    repeats: int = 5
    threads: Optional[int] = None               # torch.set_num_threads; None keeps torch's default
    dense_format: str = "auto"
    format_trials: int = 2                      # 'auto' format: best of this many calls per format
    memory: bool = True
    memory_modes: Optional[List[str]] = None    # modes whose peak memory is measured; None = every timed mode
    decoder_width: int = DECODER_WIDTH          # the SparK step's LightDecoder width (SparK's default)
    step_backends: Optional[List[str]] = None   # sparse backends run in the whole step; None = 'auto' only
    step_dtypes: List[str] = field(default_factory=list)  # the sparse step also under these autocast dtypes
    decoder_checkpointing: bool = False         # the sparse step also with --decoder-checkpointing
    encoder_checkpointing: bool = False         # ... and with encoder and decoder checkpointing together
    published: bool = True                      # the step of SparK as published (NCHW, fp32, eager) beside
    step_contenders: Optional[List[str]] = None  # step contenders to run; None = every one
    background_load: List[int] = field(default_factory=lambda: [0])  # busy processes beside each case
    head_variants: bool = False                 # the dense head's exact alternatives, speed and fp32 error
    compile_head: bool = False                  # ... with a torch.compile-d decoder among them
    tf32: bool = False
    keep_freed_memory: bool = False             # glibc keeps freed blocks for reuse, as the trainer does
    seed: int = 0
    profile_model: Optional[str] = ""           # '' = first model that runs; None = no profile
    profile_ratio: float = MASK_RATIO
    profile_batch: Optional[int] = None         # None = the first batch size
    profile_warmup: int = 1
    profile_repeats: int = 3
    profile_only: bool = False
    routing: Optional[str] = None               # 'measured' / 'fixed'; None: the process default
    quick: bool = False
    note: str = ""
    command: str = ""

    def dtypes_for(self, device: str) -> List[str]:
        if self.dtypes is not None:
            return list(self.dtypes)
        return ["fp32"] if device == "cpu" else ["fp32", "bf16", "fp16"]

    def step_backends_or_default(self) -> List[str]:
        """The whole step is mostly the dense decoder: one sparse contender ('auto') is enough by default."""
        if self.step_backends is not None:
            return list(self.step_backends)
        backends = self.backends or available_backends()
        return ["auto"] if "auto" in backends else backends[:1]

    def measured_memory_modes(self) -> List[str]:
        if not self.memory:
            return []
        return [m for m in self.modes if self.memory_modes is None or m in self.memory_modes]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def quick_config(cls, **overrides) -> "BenchConfig":
        cfg = cls(quick=True, **QUICK)
        return replace(cfg, **overrides)

    def validate(self) -> "BenchConfig":
        """Raise ValueError naming the option, the bad value and what is accepted: every value is
        checked here, before anything is measured, so a bad one never ends a run half-way."""
        from spark_sparse.archs import check_arch
        from spark_sparse.decoder import check_width
        from spark_sparse.masks import check_mask_ratio, check_patches_both_ways, patch_grid
        from spark_sparse.plan import PATCH_SIZE
        from spark_sparse.seeds import check_seed
        for m in self.models:
            check_arch(m, "--models")
        if self.profile_model:
            check_arch(self.profile_model, "--profile-model")
        h, w = self.image_size
        grid = patch_grid(h, w, PATCH_SIZE, "--size")
        size = f"--size {h}" if h == w else f"--size {h} {w}"
        for r in self.mask_ratios:
            # 0 is the sweep's unmasked reference point (every patch visible): only a ratio above it
            # must leave a patch visible and hide one at this size
            if check_mask_ratio(r, "--mask-ratios") > 0:
                check_patches_both_ways(grid, r, f"--mask-ratios at {size}:")
        if check_mask_ratio(self.profile_ratio, "--profile-ratio") > 0 and self.profile_model is not None:
            check_patches_both_ways(grid, self.profile_ratio, f"--profile-ratio at {size}:")
        for option, values, low in (("--batch", self.batches, 1), ("--background-load", self.background_load, 0),
                                    ("--warmup", [self.warmup], 0), ("--repeats", [self.repeats], 1),
                                    ("--threads", [self.threads], 1), ("--profile-batch", [self.profile_batch], 1),
                                    ("--profile-repeats", [self.profile_repeats], 1),
                                    ("profile_warmup", [self.profile_warmup], 0),
                                    ("format_trials", [self.format_trials], 1)):
            for v in values:  # None: the default (torch's threads, the first batch)
                at_least(v, option, low)
        cores = usable_cores()
        for n in self.background_load:
            if n > 4 * cores:
                raise ValueError(f"--background-load {n}: at most {4 * cores} (4 × the {cores} usable cores); "
                                 f"each is a process busy on a core, so more only slows the machine down")
        check_seed(self.seed)
        check_width(self.decoder_width, PATCH_SIZE, "--decoder-width")
        for option, values, known in (("--modes", self.modes, MODES),
                                      ("--memory-modes", self.memory_modes or [], MODES),
                                      ("--step-dtypes", self.step_dtypes, PRECISIONS),
                                      ("--dense-format", [self.dense_format], DENSE_FORMATS),
                                      ("--devices", self.devices, ("cpu", "cuda"))):
            for v in values:
                if v not in known:
                    raise ValueError(f"{option} {v!r}: unknown; choose from {', '.join(known)}")
        import torch
        for device in self.devices:
            if device == "cuda" and not torch.cuda.is_available():
                raise ValueError("--devices cuda: torch sees no CUDA device here; choose --devices cpu")
            for d in self.dtypes_for(device):
                if d not in PRECISIONS:
                    raise ValueError(f"--dtypes {d!r}: unknown; choose from {', '.join(PRECISIONS)}")
        from spark_sparse.backends import check_backend_name
        for b in (self.backends or []) + (self.step_backends or []):
            check_backend_name(b)
        from spark_sparse.routing import check_routing, get_routing
        if self.routing is not None:
            check_routing(self.routing)
        else:
            get_routing()  # a bad $SPARK_SPARSE_ROUTING is refused here, not after the sweep
        if self.step_contenders is not None:
            known = self.step_contender_names()
            for name in self.step_contenders:
                if name not in known:
                    raise ValueError(f"--step-contenders {name!r}: no such step contender in this run; choose from "
                                     f"{', '.join(map(repr, known))} (--step-backends, --step-dtypes and the "
                                     f"checkpointing options add more)")
        return self

    def step_contender_names(self) -> List[str]:
        """Every contender the whole step of this configuration can run (as the sweep names them)."""
        names = []
        for b in self.step_backends_or_default():
            name = f"sparse[{b}]"
            names += [name] + list(step_variants(name, "fp32", self.step_dtypes, self.decoder_checkpointing,
                                                 self.encoder_checkpointing))
        return names + ["masked-dense", "dense"] + ([PUBLISHED] if self.published else [])


def step_variants(name: str, dtype: str, step_dtypes, decoder_checkpointing: bool,
                  encoder_checkpointing: bool) -> Dict[str, Tuple[str, bool, bool]]:
    """The extra step contenders of sparse contender ``name`` (the one place for their names, which
    --step-contenders is checked against): {name: (autocast dtype, decoder ckpt, encoder ckpt)}."""
    out = {f"{name} {d}": (d, False, False) for d in step_dtypes}
    if decoder_checkpointing:
        out[f"{name} ckpt"] = (dtype, True, False)
    if encoder_checkpointing:
        out[f"{name} ckpt-all"] = (dtype, True, True)
    return out


def default_devices() -> List[str]:
    import torch
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def available_backends() -> List[str]:
    """Every conv backend usable here, then 'auto' (what a user gets by default)."""
    from spark_sparse.backends import BACKEND_NAMES, check_backend_name
    names = []
    for name in BACKEND_NAMES:
        if name == "auto":
            continue
        try:
            check_backend_name(name)
        except (ImportError, ValueError):
            continue
        names.append(name)
    return names + ["auto"]
