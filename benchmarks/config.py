"""What one benchmark run measures: models, mask ratios, batches, devices, dtypes, backends, modes.

A plain dataclass, built from the command line (``spark_sparse/commands/bench.py``) or by hand, so
the runner never reads ``argparse`` objects and tests can build small configurations directly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional, Tuple

import torch

DEFAULT_MODELS = ("resnet50", "resnet101", "convnext_tiny", "convnext_small", "convnext_base")
DEFAULT_MASK_RATIOS = (0.0, 0.25, 0.5, 0.6, 0.75, 0.9)
MODES = ("fwd", "fwd_bwd", "step")
MODE_TITLES = {"fwd": "encoder forward", "fwd_bwd": "encoder forward+backward",
               "step": "whole SparK step (encoder + densify + decoder + loss + backward + optimizer)"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DENSE_FORMATS = ("auto", "contiguous", "channels_last")

# --quick: small enough for CI (2 cores, well under 40 s with the test around it); it checks that
# every code path runs and that the outputs are valid, not the speed of anything.
QUICK = dict(models=["resnet18", "convnext_atto"], mask_ratios=[0.5], batches=[2], image_size=(64, 64),
             warmup=0, repeats=1, dense_format="contiguous", decoder_width=32, memory_modes=["fwd_bwd"],
             profile_warmup=0, profile_repeats=1, profile_model="resnet18")


@dataclass
class BenchConfig:
    models: List[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    mask_ratios: List[float] = field(default_factory=lambda: list(DEFAULT_MASK_RATIOS))
    batches: List[int] = field(default_factory=lambda: [16])
    image_size: Tuple[int, int] = (224, 224)
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
    decoder_width: int = 768                    # the SparK step's LightDecoder width (SparK's default)
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
    profile_ratio: float = 0.6
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
        """Raise ValueError naming the bad value and what is accepted."""
        from spark_sparse.archs import check_arch
        from spark_sparse.masks import check_mask_ratio, patch_grid
        from spark_sparse.plan import PATCH_SIZE
        for m in self.models:
            check_arch(m, "--models")
        if self.profile_model:
            check_arch(self.profile_model, "--profile-model")
        for r in self.mask_ratios:
            check_mask_ratio(r)
        check_mask_ratio(self.profile_ratio)
        patch_grid(*self.image_size, PATCH_SIZE)
        for b in self.batches:
            if b < 1:
                raise ValueError(f"batch sizes must be >= 1, got {b}")
        for m in self.modes + (self.memory_modes or []):
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
        for n in self.background_load:
            if n < 0:
                raise ValueError(f"background load must be >= 0 busy processes, got {n}")
        for d in self.step_dtypes:
            if d not in DTYPES:
                raise ValueError(f"unknown step dtype {d!r}; choose from {', '.join(DTYPES)}")
        for device in self.devices:
            if device not in ("cpu", "cuda"):
                raise ValueError(f"unknown device {device!r}; choose cpu or cuda")
            if device == "cuda" and not torch.cuda.is_available():
                raise ValueError("device 'cuda' requested but torch sees no CUDA device")
            for d in self.dtypes_for(device):
                if d not in DTYPES:
                    raise ValueError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
        if self.decoder_width < 1:
            raise ValueError(f"decoder width must be >= 1, got {self.decoder_width}")
        if self.dense_format not in DENSE_FORMATS:
            raise ValueError(f"unknown dense format {self.dense_format!r}; choose from {', '.join(DENSE_FORMATS)}")
        if self.warmup < 0 or self.profile_warmup < 0 or self.repeats < 1 or self.profile_repeats < 1 \
                or self.format_trials < 1:
            raise ValueError("need warm-ups >= 0, and repeats and format trials >= 1")
        from spark_sparse.backends import check_backend_name
        for b in (self.backends or []) + (self.step_backends or []):
            check_backend_name(b)
        if self.routing is not None:
            from spark_sparse.routing import check_routing
            check_routing(self.routing)
        return self


def default_devices() -> List[str]:
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
