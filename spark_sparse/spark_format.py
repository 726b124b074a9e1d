"""Weights from elsewhere, in our names: SparK's published files, official ConvNeXt names, timm files.

What ``spark-sparse import`` reads (layouts read from keyu-tian/SparK ``pretrain/`` and
facebookresearch/ConvNeXt; the tests build such files from this description):

- **a timm state dict or checkpoint** — bare ``{key: tensor}``, safetensors, or wrapped as timm's
  training checkpoints (``{"state_dict": …, "arch", "epoch", …}``), ``{"model": …}`` or
  ``{"module": …}``, keys possibly prefixed ``module.`` (DistributedDataParallel). The classifier
  head is dropped.
- **SparK's ``<arch>_1kpretrained_timm_style.pth``** — ``sparse_encoder.sp_cnn.state_dict()``, bare or
  wrapped as ``{"module": …}``. ResNets: timm's names (SparK builds them with ``num_classes=0``, so no
  ``fc``); ConvNeXts: the official ConvNeXt names below (no ``norm``/``head`` either).
- **SparK's ``<arch>_withdecoder_1kpretrained_spark_style.pth``** — ``{"module": SparK.state_dict(
  with_config=True), "arch", "epoch", "input_size", "performance_desc", "args" (a string),
  "optimizer", "is_pretrain": True}``. ``module`` holds ``sparse_encoder.sp_cnn.<encoder key>``,
  ``dense_decoder.<LightDecoder key>`` (``dec.<i>.up_sample``, ``dec.<i>.conv.{0,1,3,4}``, ``proj``),
  ``densify_norms.<i>.*`` (BatchNorm1d for ResNets, LayerNorm for ConvNeXts), ``densify_projs.<i>.*``,
  ``mask_tokens.<i>`` (i = 0 the deepest stage), three unused buffers ``imn_m``, ``imn_s``,
  ``norm_black``, and ``config`` = ``{"mask_ratio", "densify_norm_str", "sbn", "hierarchy",
  "sparse_encoder.input_size", "dense_decoder.width"}``. Our SparK model uses the same names for
  the densify layers, mask tokens and decoder. Their optimizer state is not carried over (its
  parameter order is theirs).

Official ConvNeXt names → timm's (V2's GRN included):

=============================================  ===============================================
``downsample_layers.0.{0,1}.*`` (stem conv, LN)  ``stem.{0,1}.*``
``downsample_layers.<i>.{0,1}.*`` (LN, conv)     ``stages.<i>.downsample.{0,1}.*``
``stages.<i>.<j>.dwconv.*``                      ``stages.<i>.blocks.<j>.conv_dw.*``
``stages.<i>.<j>.norm.*``                        ``stages.<i>.blocks.<j>.norm.*``
``stages.<i>.<j>.pwconv{1,2}.*``                 ``stages.<i>.blocks.<j>.mlp.fc{1,2}.*``
``stages.<i>.<j>.gamma`` (layer scale)           ``stages.<i>.blocks.<j>.gamma``
``stages.<i>.<j>.grn.{gamma,beta}`` (1,1,1,C)    ``stages.<i>.blocks.<j>.mlp.grn.{weight,bias}`` (C,)
``norm.*``, ``head.*`` (fine-tuned models)       ``head.norm.*``, ``head.fc.*`` (dropped: the head)
=============================================  ===============================================
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch

from .weights import WeightsError, read_file, strip_prefix, tensors_only

SPARK_ENCODER = "sparse_encoder.sp_cnn."
SPARK_DECODER = "dense_decoder."
SPARK_DENSIFY = ("densify_norms.", "densify_projs.", "mask_tokens.")
SPARK_UNUSED = ("imn_m", "imn_s", "norm_black")  # buffers SparK registers and never reads
OUR_FORMAT = "spark_sparse.pretrain"


@dataclass
class Imported:
    """A file's weights in our names, before they are matched to an architecture."""
    source: str
    kind: str                          # what the file was recognised as (for messages)
    encoder: Dict[str, torch.Tensor]   # timm names (the classifier head may still be in)
    spark_head: Dict[str, torch.Tensor] = field(default_factory=dict)  # our SparK model's non-encoder keys
    dropped: List[str] = field(default_factory=list)                   # keys deliberately left out
    recorded: Dict[str, Any] = field(default_factory=dict)             # what the file says about itself


# ---- official ConvNeXt names ---------------------------------------------------------------------------
_OFFICIAL_KEY = re.compile(r"^(downsample_layers\.\d+\.|stages\.\d+\.\d+\.)")
_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(.*)$")
_BLOCK_PARTS = (("dwconv.", "conv_dw."), ("pwconv1.", "mlp.fc1."), ("pwconv2.", "mlp.fc2."),
                ("grn.gamma", "mlp.grn.weight"), ("grn.beta", "mlp.grn.bias"))


def is_official_convnext(state: Mapping[str, Any]) -> bool:
    return any(_OFFICIAL_KEY.match(k) for k in state)


def official_convnext_key(key: str) -> str:
    """One official ConvNeXt key in timm's naming (see the table above); other keys unchanged."""
    m = re.match(r"^downsample_layers\.(\d+)\.(.*)$", key)
    if m:
        return f"stem.{m.group(2)}" if m.group(1) == "0" else f"stages.{m.group(1)}.downsample.{m.group(2)}"
    m = _BLOCK.match(key)
    if m:
        rest = m.group(3)
        for old, new in _BLOCK_PARTS:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        return f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"
    if key.startswith("norm."):
        return "head." + key
    if key.startswith("head.") and not key.startswith(("head.norm.", "head.fc.")):
        return "head.fc." + key[len("head."):]
    return key


def official_convnext_to_timm(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = official_convnext_key(key)
        if ".grn." in new and value.dim() == 4:  # (1, 1, 1, C) → (C,)
            value = value.reshape(value.shape[-1])
        out[new] = value
    return out


# ---- reading a file ------------------------------------------------------------------------------------
def _unwrap(obj: Mapping[str, Any]):
    """(inner state dict, wrapper key or None): SparK's ``module``, timm's ``state_dict``, FB's ``model``."""
    for key in ("module", "state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, key
    return obj, None


def _recorded(obj: Mapping[str, Any], inner: Mapping[str, Any], metadata: Mapping[str, str]) -> Dict[str, Any]:
    rec: Dict[str, Any] = {}
    for key in ("arch", "epoch", "input_size", "is_pretrain", "performance_desc"):
        if isinstance(obj.get(key), (str, int, float, bool)):
            rec[key] = obj[key]
    if metadata.get("arch"):
        rec["arch"] = metadata["arch"]
    config = inner.get("config")
    if isinstance(config, Mapping):  # SparK's with_config=True
        if "mask_ratio" in config:
            rec["mask_ratio"] = float(config["mask_ratio"])
        if config.get("densify_norm_str"):
            rec["densify_norm"] = str(config["densify_norm_str"]).lower()
        if "sparse_encoder.input_size" in config and "input_size" not in rec:
            rec["input_size"] = int(config["sparse_encoder.input_size"])
    return rec


def _split_spark(state: Dict[str, torch.Tensor], source: str):
    """SparK's ``module``: (encoder, our SparK head, dropped keys)."""
    encoder, head, dropped, unknown = {}, {}, [], []
    for key, value in state.items():
        if key.startswith(SPARK_ENCODER):
            encoder[key[len(SPARK_ENCODER):]] = value
        elif key.startswith(SPARK_DECODER):
            head["decoder." + key[len(SPARK_DECODER):]] = value
        elif key.startswith(SPARK_DENSIFY):
            head[key] = value
        elif key in SPARK_UNUSED:
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"{source}: a SparK file with keys SparK's model does not have: "
                           f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}")
    return encoder, head, dropped


def spark_head_config(head: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Decoder width and densify norm, as SparK's head weights fix them."""
    cfg: Dict[str, Any] = {}
    up = head.get("decoder.dec.0.up_sample.weight")
    if up is not None:
        cfg["decoder_width"] = int(up.shape[0])
    if "densify_norms.0.running_mean" in head:
        cfg["densify_norm"] = "bn"
    elif "densify_norms.0.weight" in head:
        cfg["densify_norm"] = "ln"
    elif head:
        cfg["densify_norm"] = "none"
    return cfg


def read_weights(path: str, *, trust: bool = False) -> Imported:
    """Read any supported file (see the module docstring) into an :class:`Imported`."""
    obj, metadata = read_file(path, trust=trust)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict; accepted: a timm state dict "
                           f"or checkpoint, or SparK's *_1kpretrained_timm_style.pth / "
                           f"*_withdecoder_1kpretrained_spark_style.pth")
    if obj.get("format") == OUR_FORMAT:
        raise WeightsError(f"{path}: already a spark_sparse checkpoint; use it as it is (pretrain --resume, "
                           f"export, reconstruct)")
    inner, wrapper = _unwrap(obj)
    state = strip_prefix(tensors_only(inner), "module.")
    if not state:
        raise WeightsError(f"{path}: no tensors found (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    recorded = _recorded(obj, inner, metadata)
    if any(k.startswith(SPARK_ENCODER) for k in state):
        encoder, head, dropped = _split_spark(state, path)
        kind = "SparK pre-training file (encoder" + (" + decoder)" if head else ")")
        recorded.update({k: v for k, v in spark_head_config(head).items() if k not in recorded})
    else:
        encoder, head, dropped = state, {}, []
        kind = {"module": "state dict wrapped in 'module' (SparK)", "state_dict": "timm checkpoint",
                "model": "checkpoint wrapped in 'model'"}.get(wrapper, "state dict")
    if is_official_convnext(encoder):
        encoder = official_convnext_to_timm(encoder)
        kind += ", official ConvNeXt names"
    return Imported(path, kind, dict(encoder), head, dropped, recorded)


def recorded_arch(imported: Imported) -> Optional[str]:
    arch = imported.recorded.get("arch")
    return str(arch) if arch else None
