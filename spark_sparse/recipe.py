"""SparK's recipe values, the one place each is written: pre-training, the model's defaults, weight
import, export, reconstruct and the benchmarks read them from here (kept free of heavy imports: the
command line reads them while building its parser)."""
from __future__ import annotations

MASK_RATIO = 0.6        # fraction of the 32×32 patches hidden
DECODER_WIDTH = 768     # LightDecoder width at stride 32, halved at every upsampling step
INPUT_SIZE = 224        # SparK's ImageNet crop size (its own pre-training's default)
BASE_LR = 2e-4          # peak lr = BASE_LR × global batch / 256
WEIGHT_DECAY = 0.04     # weight decay at the first step, cosine to WEIGHT_DECAY_END at the last
WEIGHT_DECAY_END = 0.2
CLIP = 5.0              # global gradient-norm clipping
# Norm of the active sites before densifying: auto = bn for BatchNorm backbones (ResNets), ln otherwise.
DENSIFY_NORMS = ("auto", "bn", "ln", "none")

# SparK's drop-path rates per backbone; other backbones train without drop path.
DROP_PATH = {"resnet50": 0.05, "resnet101": 0.08, "resnet152": 0.1, "resnet200": 0.15,
             "convnext_small": 0.2, "convnext_base": 0.3, "convnext_large": 0.4}


def default_drop_path(arch: str) -> float:
    """SparK's drop-path rate for the backbone ``arch`` (0 for the ones its recipe does not list)."""
    return DROP_PATH.get(arch.split(".")[0], 0.0)
