"""Pre-trained encoder weights out to a plain dense timm model, and the proof that they arrived intact.

The encoder's state_dict already has timm's keys, shapes and layouts (the classifier head left out),
so exporting is writing those tensors — BatchNorm running statistics included, as the sparse
encoder accumulated them over active sites during pre-training. The file loads through timm's
own path::

    timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=FILE), num_classes=N)

(timm then leaves the new head — and, for ConvNeXt, the head's norm — at their initialisation;
with ``num_classes`` equal to the original 1000 also pass ``pretrained_strict=False``).

:func:`verify` rebuilds the dense model from the file that way and the sparse encoder from the
checkpoint, and compares the dense model under SparK's masking (the masked-dense reference) with
the sparse encoder on random images and masks, in eval mode, per stage on visible sites.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from .files import atomic_write
from .masks import dense_mask, num_visible, random_visible
from .reference import MaskedDenseEncoder
from .restore import build_model, encoder_state
from .weights import WeightsError, check_encoder_state, read_file

FORMATS = ("safetensors", "pth")
DEFAULT_TOLERANCE = 1e-4  # the contract's: max |sparse − reference| ≤ 1e-4 · max |reference| per stage


def format_for(path: str, fmt: Optional[str] = None) -> str:
    """The format timm will read ``path`` as: it picks its loader by the name (safetensors for
    ``*.safetensors``, ``torch.load`` for any other name), so that is the format written; a ``fmt``
    that disagrees with the name is refused, since timm could not load the file."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    named = "safetensors" if path.lower().endswith(".safetensors") else "pth"
    if fmt is not None and fmt != named:
        rename = "end it in .safetensors" if fmt == "safetensors" else "end it in .pth, .pt or .bin"
        raise ValueError(f"--format {fmt} does not fit --out {path}: timm reads a file named so as {named} "
                         f"(safetensors only for *.safetensors), so it could not load it; {rename}, or drop --format")
    return named


def timm_state(payload: Dict[str, Any], source: str) -> Dict[str, torch.Tensor]:
    """The checkpoint's encoder as a timm state dict: contiguous CPU tensors that own their memory."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder_state(payload, source).items()}


def write_weights(state: Dict[str, torch.Tensor], path: str, fmt: str, metadata: Dict[str, str]) -> None:
    """Write ``state`` atomically (temporary file beside ``path``, then rename): never a half file."""
    def write(tmp: str) -> None:
        if fmt == "safetensors":
            from safetensors.torch import save_file
            save_file(state, tmp, metadata=metadata)
        else:
            torch.save(state, tmp)  # a bare state dict: what timm's loader and load_state_dict expect
    atomic_write(path, write)


def export(payload: Dict[str, Any], source: str, out: str, fmt: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Write the checkpoint's encoder to ``out`` as a timm state dict; return what was written."""
    state = timm_state(payload, source)
    metadata = {"arch": str(payload["arch"]), "format": "timm state dict (encoder; no classifier head)",
                "source": os.path.abspath(source), "step": str(payload.get("step", "")),
                "producer": "spark_sparse export"}
    write_weights(state, out, format_for(out, fmt), metadata)
    return state


def load_timm(arch: str, path: str, num_classes: int = 0) -> torch.nn.Module:
    """The dense timm model with the exported weights, through timm's own loading path.

    Checks the file's keys and shapes first: timm loads non-strictly when the head is replaced, so a
    missing encoder key would otherwise pass silently.
    """
    import timm
    state, _ = read_file(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    check_encoder_state(state, arch, path)
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=os.path.abspath(path)),
                             num_classes=num_classes)


@dataclass
class StageError:
    stride: int
    channels: int
    error: float  # max |dense − sparse| / max |dense| over visible sites


def verify_setting(payload: Dict[str, Any], size: Optional[int] = None,
                   mask_ratio: Optional[float] = None) -> Tuple[int, float]:
    """The image size and mask ratio of a verification (default: the checkpoint's), refused where no
    patch would be visible: every stage's error would be 0 with nothing compared."""
    config = payload["model_config"]  # every checkpoint's model_config records these (spark.model_config)
    size = int(config["input_size"]) if size is None else size
    mask_ratio = float(config["mask_ratio"]) if mask_ratio is None else mask_ratio
    patch = int(config["patch_size"])
    if size <= 0 or size % patch:
        raise ValueError(f"verification image size must be a positive multiple of {patch}, got {size}")
    if num_visible((size // patch) ** 2, mask_ratio) == 0:
        raise ValueError(f"verification at {size}px with mask ratio {mask_ratio} keeps no patch visible, so "
                         f"nothing would be compared: use a larger --verify-size")
    return size, mask_ratio


def verify(payload: Dict[str, Any], source: str, exported: str, *, batch: int = 2, size: Optional[int] = None,
           mask_ratio: Optional[float] = None, seed: int = 0) -> List[StageError]:
    """Per-stage error between the dense timm model built from ``exported`` (under SparK's masking) and
    the sparse encoder built from the checkpoint, on random images and masks, eval mode, fp32."""

    size, mask_ratio = verify_setting(payload, size, mask_ratio)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        sparse = build_model(payload, source, encoder_kind="sparse").encoder.eval()
        dense = MaskedDenseEncoder(load_timm(payload["arch"], exported).eval()).eval()
        patch = sparse.patch_size
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(batch, 3, size, size, generator=g)
        visible = random_visible(batch, (size // patch, size // patch), mask_ratio, generator=g)
        with torch.no_grad():
            got, want = sparse(images, visible), dense(images, visible)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    errors = []
    for s, d, stride, channels in zip(got, want, sparse.strides, sparse.channels):
        on = dense_mask(visible, stride, patch).expand_as(d)
        scale = d[on].abs().max().clamp_min(1e-30) if on.any() else torch.tensor(1.0)
        err = float((s[on] - d[on]).abs().max() / scale) if on.any() else 0.0
        errors.append(StageError(stride, channels, err))
    return errors
