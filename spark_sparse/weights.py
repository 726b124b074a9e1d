"""Weight files: reading any state-dict file safely, and checking its tensors against a timm architecture.

``import``, ``export`` and ``reconstruct`` all check weights here, so a wrong file is refused in one
way everywhere: the file named, what differs (the first few missing and unexpected keys and shape
mismatches) and, when the tensors fit another known architecture, which one they look like.

Architectures are described by a timm model built on the ``meta`` device (shapes only, no memory);
its *encoder* keys are those of the modules a SparseEncoder keeps
(:class:`~spark_sparse.plan.EncoderPlan`), the rest (``fc.*``, ``head.*``) is the classifier head.
"""
from __future__ import annotations

import functools
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .archs import check_arch
from .files import file_kind, zip_damage
from .plan import EncoderPlan

SHOWN = 5  # keys listed per kind of difference in an error


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, or its tensors do not fit the architecture."""


# ---- reading ----------------------------------------------------------------------------------------
def read_file(path: str, *, trust: bool = False) -> Tuple[Any, Dict[str, str]]:
    """The object stored in ``path`` (a safetensors or ``torch.save`` file) and its text metadata.

    ``torch.save`` files are loaded with ``weights_only=True`` (tensors and plain values only);
    ``trust=True`` allows any pickled object — only for files from a source you trust.
    """
    if os.path.isdir(path):
        raise WeightsError(f"{path}: a folder, not a weights file")
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    kind = file_kind(path)
    if kind == "safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: unreadable safetensors file ({e}); truncated or corrupt?") from e
    if kind == "zip":
        try:
            bad = zip_damage(path)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise WeightsError(f"{path}: unreadable ({type(e).__name__}: {e}); truncated or corrupt?") from e
        if bad is not None:
            raise WeightsError(f"{path}: corrupt (checksum mismatch in record {bad})")
    elif kind == "unknown":
        raise WeightsError(f"{path}: not a weights file (neither safetensors nor torch.save); accepted: "
                           f"*.safetensors, or *.pth / *.pt / *.bin written by torch.save")
    try:
        with open(path, "rb") as f:  # a file object: torch would pick a loader from a path's extension
            return torch.load(f, map_location="cpu", weights_only=not trust), {}
    except Exception as e:  # noqa: BLE001 — torch raises many types here; all mean the same to the user
        if not trust and "weights_only" in str(e):
            raise WeightsError(f"{path}: holds Python objects other than tensors and plain values, which are not "
                               f"loaded by default (they can run code). If you trust the file's source, pass "
                               f"--trust-file. ({str(e).splitlines()[0]})") from e
        raise WeightsError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           f"truncated or corrupt?") from e


def tensors_only(obj: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Remove ``prefix`` when every key has it (e.g. DistributedDataParallel's ``module.``)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


# ---- architectures ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _shapes(arch: str) -> Tuple[Dict[str, Tuple[int, ...]], Tuple[str, ...]]:
    import timm

    check_arch(arch, "architecture")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    keep = set(EncoderPlan.from_model(model).top_level)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    encoder = {k: s for k, s in shapes.items() if k.split(".")[0] in keep}
    head = tuple(k for k in shapes if k not in encoder)
    return encoder, head


def encoder_shapes(arch: str) -> Dict[str, Tuple[int, ...]]:
    """Key → shape of the encoder part of ``timm.create_model(arch)``'s state_dict (the head left out)."""
    return dict(_shapes(arch)[0])


def head_keys(arch: str) -> List[str]:
    """The classifier head's keys (``fc.*`` for ResNets, ``head.norm.*`` and ``head.fc.*`` for ConvNeXts)."""
    return list(_shapes(arch)[1])


@dataclass
class Difference:
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  # key, file, arch

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, arch: str) -> str:
        def listing(keys):
            shown = ", ".join(keys[:SHOWN])
            return shown + (f", … ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({listing(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({listing(self.unexpected)})")
        if self.mismatched:
            shown = [f"{k}: file {tuple(a)} vs {arch} {tuple(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} of another shape ({listing(shown)})")
        return "; ".join(parts)


def compare(state: Mapping[str, torch.Tensor], expected: Mapping[str, Tuple[int, ...]]) -> Difference:
    diff = Difference()
    diff.missing = [k for k in expected if k not in state]
    diff.unexpected = [k for k in state if k not in expected]
    diff.mismatched = [(k, tuple(state[k].shape), tuple(s)) for k, s in expected.items()
                       if k in state and tuple(state[k].shape) != tuple(s)]
    return diff


def check_encoder_state(state: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    """Raise :class:`WeightsError` unless ``state`` has exactly the encoder keys and shapes of ``arch``."""
    diff = compare(state, encoder_shapes(arch))
    if diff:
        guess = guess_arch(state)
        hint = f" They look like {guess}." if guess else ""
        raise WeightsError(f"{source}: the weights do not fit a {arch} encoder: {diff.describe(arch)}.{hint}")


# ---- recognising an architecture from its weights ----------------------------------------------------
def _depths(keys, pattern: str) -> Tuple[int, ...]:
    found: Dict[int, set] = {}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return tuple(len(found[i]) for i in sorted(found))


# ConvNeXt sizes by stem width (the depths tell tiny from small).
_CONVNEXT_SIZES = {40: "atto", 48: "femto", 64: "pico", 80: "nano", 128: "base", 192: "large", 256: "xlarge",
                   352: "huge", 384: "xxlarge"}


def _candidates(state: Mapping[str, torch.Tensor]) -> Tuple[List[str], str]:
    keys = list(state)
    if "layer1.0.conv1.weight" in state:
        depths = _depths(keys, r"layer(\d+)\.(\d+)\.")
        bottleneck = "layer1.0.conv3.weight" in state
        depth = (3 if bottleneck else 2) * sum(depths) + 2
        deep = "conv1.0.weight" in state
        what = (f"a ResNet with {'bottleneck' if bottleneck else 'basic'} blocks, depths "
                f"{'-'.join(map(str, depths))}{', deep stem' if deep else ''}")
        return ([f"resnet{depth}{v}" for v in ("d", "c", "s", "t")] if deep else [f"resnet{depth}"]), what
    if "stem.0.weight" in state and any(".blocks." in k for k in keys):
        depths = _depths(keys, r"stages\.(\d+)\.blocks\.(\d+)\.")
        width = int(state["stem.0.weight"].shape[0])
        v2 = any(".grn." in k for k in keys)
        size = _CONVNEXT_SIZES.get(width) or ({9: "tiny", 27: "small"}.get(depths[2]) if width == 96 and
                                               len(depths) > 2 else None)
        what = f"a ConvNeXt{' V2' if v2 else ''} with depths {'-'.join(map(str, depths))}, stem width {width}"
        return ([f"convnext{'v2' if v2 else ''}_{size}"] if size else []), what
    return [], ""


def recognise(state: Mapping[str, torch.Tensor]) -> Tuple[Optional[str], str]:
    """(timm name or None, description) of the architecture the (timm-named) weights fit exactly."""
    import timm
    candidates, what = _candidates(state)
    known = set(timm.list_models())
    for name in candidates:
        if name in known:
            head = set(head_keys(name))
            if not compare({k: v for k, v in state.items() if k not in head}, encoder_shapes(name)):
                return name, what
    return None, what


def guess_arch(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """'resnet50 (a ResNet with bottleneck blocks, depths 3-4-6-3)' when the weights fit a timm model
    exactly; the description alone when they fit none; None when unrecognisable."""
    name, what = recognise(state)
    if name:
        return f"{name} ({what})"
    return what or None
