"""Imported weights (timm, SparK, official ConvNeXt files, read by :mod:`spark_sparse.spark_format`)
converted into a weights-only pre-training checkpoint.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..masks import check_mask_ratio, patch_grid
from ..plan import PATCH_SIZE
from ..recipe import DECODER_WIDTH, INPUT_SIZE, MASK_RATIO, default_drop_path
from ..restore import ENCODER_PREFIX
from ..spark import build_spark
from ..spark_format import Imported, recorded_arch, spark_head_config
from ..weights import WeightsError, check_encoder_state, compare, encoder_shapes, head_keys, recognise
from .checkpoint import weights_checkpoint

# Weights are trained in these; anything else (integers, bools, complex) is not a trained weight and a
# silent cast to float32 would hide a wrong file.
FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGER_BUFFERS = ("num_batches_tracked",)  # BatchNorm's step counter: an integer by definition


def check_dtypes(state: Dict[str, torch.Tensor], source: str) -> None:
    """Refuse, naming the first offender, any weight or statistic that is not fp16/bf16/fp32/fp64."""
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in INTEGER_BUFFERS:
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                raise WeightsError(f"{source}: {key} is {value.dtype}; a BatchNorm step counter must be an integer")
            continue
        if value.dtype not in FLOATING:
            raise WeightsError(f"{source}: {key} is {value.dtype}; weights and statistics must be floating point "
                               f"(float16, bfloat16, float32 or float64) — is this the right file?")


def choose_arch(imported: Imported, arch: Optional[str]) -> str:
    """``arch`` if given (it must agree with what the file records), else the file's record, else the
    architecture its weights fit."""
    recorded = recorded_arch(imported)
    if arch and recorded and recorded != arch:
        raise WeightsError(f"{imported.source}: the file records architecture {recorded!r}, --arch says {arch!r}")
    if arch or recorded:
        return arch or recorded
    name, what = recognise(imported.encoder)
    if name is None:
        raise WeightsError(f"{imported.source}: the file does not record its architecture and its weights fit no "
                           f"known timm model{f' ({what})' if what else ''}; pass --arch")
    return name


def _same_pointwise(a, b) -> bool:
    """Shapes (O, I) and (O, I, 1, 1): a Linear and a 1×1 conv holding the same weights."""
    short, long_ = sorted((tuple(a), tuple(b)), key=len)
    return len(short) == 2 and len(long_) == 4 and long_[2:] == (1, 1) and long_[:2] == short


def _adapt(encoder: Dict[str, torch.Tensor], arch: str) -> Dict[str, torch.Tensor]:
    """What PyTorch itself would accept: Linear ↔ 1×1 conv layouts of the same weights (ConvNeXt's
    ``conv_mlp``), BatchNorm's ``num_batches_tracked`` absent from old files (0), floats to fp32."""
    shapes = encoder_shapes(arch)
    out = {}
    for k, v in encoder.items():
        if k in shapes and _same_pointwise(v.shape, shapes[k]):
            v = v.reshape(shapes[k])
        out[k] = v.float() if v.is_floating_point() else v
    for k in shapes:
        bn = k[:-len("num_batches_tracked")]
        if k.endswith(".num_batches_tracked") and k not in out and bn + "running_mean" in out:
            out[k] = torch.tensor(0, dtype=torch.long)
    return out


def checkpoint_from_import(imported: Imported, arch: Optional[str] = None, *, decoder_width: Optional[int] = None,
                           mask_ratio: Optional[float] = None, densify_norm: Optional[str] = None,
                           input_size: Optional[int] = None, seed: int = 0) -> Dict[str, Any]:
    """A weights-only pre-training checkpoint (see spark_sparse/io/checkpoint.py) from imported weights.

    The encoder comes from the file; the decoder, densify layers and mask tokens from a SparK
    "withdecoder" file, else freshly initialised (SparK's initialisation, seeded by ``seed``).
    Options left None take what the file records (SparK's files record their mask ratio and input
    size, a SparK "withdecoder" file also its decoder width and densify norm), else SparK's recipe
    (:mod:`spark_sparse.recipe`: decoder width 768, mask ratio 0.6, input size 224 — SparK's ImageNet
    crop, not ``spark-sparse pretrain``'s 96 px demo default) and densify norm 'auto'.
    """
    arch = choose_arch(imported, arch)
    head_of_arch = set(head_keys(arch))
    dropped = [k for k in imported.encoder if k in head_of_arch]
    encoder = {k: v for k, v in imported.encoder.items() if k not in head_of_arch}
    check_dtypes(encoder, imported.source)
    check_dtypes(imported.spark_head, imported.source)
    encoder = _adapt(encoder, arch)
    check_encoder_state(encoder, arch, imported.source)

    rec = imported.recorded
    fixed = spark_head_config(imported.spark_head)  # a SparK head fixes these
    for name, asked in (("decoder_width", decoder_width), ("densify_norm", densify_norm)):
        if asked is not None and name in fixed and asked != fixed[name]:
            raise WeightsError(f"{imported.source}: its decoder has {name.replace('_', ' ')} {fixed[name]!r}, "
                               f"--{name.replace('_', '-')} asks for {asked!r}; leave the option out to keep the "
                               f"file's decoder")
    decoder_width = fixed.get("decoder_width", DECODER_WIDTH if decoder_width is None else decoder_width)
    densify_norm = fixed.get("densify_norm", densify_norm or "auto")
    mask_ratio = mask_ratio if mask_ratio is not None else float(rec.get("mask_ratio", MASK_RATIO))
    input_size = input_size if input_size is not None else int(rec.get("input_size", INPUT_SIZE))

    check_mask_ratio(mask_ratio)
    try:
        patch_grid(input_size, input_size, PATCH_SIZE, "input size")
    except ValueError as e:
        raise WeightsError(str(e)) from None
    drop_path = default_drop_path(arch)
    with torch.random.fork_rng(devices=[]):  # a seeded fresh head, the caller's RNG untouched
        torch.manual_seed(seed)
        model = build_spark(arch, encoder_kind="sparse", backend="auto", drop_path=drop_path,
                            decoder_width=decoder_width, mask_ratio=mask_ratio, densify_norm=densify_norm)
    state = model.state_dict()
    state.update({ENCODER_PREFIX + k: v for k, v in encoder.items()})
    if imported.spark_head:
        expected = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}
        diff = compare(imported.spark_head, expected)
        if diff:
            raise WeightsError(f"{imported.source}: its decoder / densify weights do not fit SparK's head for "
                               f"{arch} (decoder width {decoder_width}): {diff.describe('ours')}")
        state.update({k: v.float() if v.is_floating_point() else v for k, v in imported.spark_head.items()})
    model.load_state_dict(state)

    return weights_checkpoint(model, arch, input_size=input_size, drop_path=drop_path, imported_from={
        "path": imported.source, "kind": imported.kind,
        "decoder": "from the file" if imported.spark_head else f"fresh (seed {seed})",
        "dropped": list(imported.dropped) + dropped,
        "recorded": {k: v for k, v in rec.items() if isinstance(v, (str, int, float, bool))}})
