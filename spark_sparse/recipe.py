"""SparK's recipe values that depend on the backbone, shared by pre-training and weight import
(kept free of heavy imports: the command line reads them while building its parser)."""
from __future__ import annotations

# SparK's drop-path rates per backbone; other backbones train without drop path.
DROP_PATH = {"resnet50": 0.05, "resnet101": 0.08, "resnet152": 0.1, "resnet200": 0.15,
             "convnext_small": 0.2, "convnext_base": 0.3, "convnext_large": 0.4}


def default_drop_path(arch: str) -> float:
    """SparK's drop-path rate for the backbone ``arch`` (0 for the ones its recipe does not list)."""
    return DROP_PATH.get(arch.split(".")[0], 0.0)
