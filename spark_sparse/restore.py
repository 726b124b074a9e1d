"""SparK models from pre-training checkpoints, and checkpoints from imported weights.

The checkpoint format is the trainer's (``spark_sparse.checkpoint``); everything here reads
or writes it through that module, and checks weights against the architecture with
:mod:`spark_sparse.weights`, so a wrong file gets the same clear error from every command.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch

from . import checkpoint as ckpt
from .masks import check_mask_ratio, patch_grid
from .plan import PATCH_SIZE
from .recipe import default_drop_path
from .spark import SparK, build_spark, model_config
from .spark_format import Imported, recorded_arch, spark_head_config
from .weights import WeightsError, check_encoder_state, compare, encoder_shapes, head_keys, recognise

ENCODER_PREFIX = "encoder."


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Load and validate a pre-training checkpoint (``CheckpointError`` saying what is wrong otherwise)."""
    try:
        return ckpt.load(path)
    except FileNotFoundError as e:
        raise ckpt.CheckpointError(f"{path}: no such file") from e
    except ckpt.CheckpointError as e:
        if "not a spark_sparse" in str(e):
            raise ckpt.CheckpointError(f"{e}; for timm or SparK weights, make one first with "
                                       f"`spark-sparse import {path} --arch ARCH --out CKPT`") from e
        raise


def encoder_state(payload: Dict[str, Any], source: str) -> Dict[str, torch.Tensor]:
    """The checkpoint's encoder weights under timm's names, checked against its architecture."""
    state = {k[len(ENCODER_PREFIX):]: v for k, v in payload["model"].items() if k.startswith(ENCODER_PREFIX)}
    check_encoder_state(state, payload["arch"], source)
    return state


def build_model(payload: Dict[str, Any], source: str, *, encoder_kind: Optional[str] = "sparse",
                backend: Optional[str] = None) -> SparK:
    """The SparK model a checkpoint describes, with its weights, in eval mode.

    ``encoder_kind``: 'sparse' (default), 'masked_dense', or None for the checkpoint's own; both
    encoders have the same weights, so either can be built from any checkpoint.
    """
    config = dict(payload["model_config"])
    config["encoder_kind"] = encoder_kind or payload["encoder_kind"]
    if backend:
        config["backend"] = backend
    encoder_state(payload, source)  # a clear error before load_state_dict's long one
    model = build_spark(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(ENCODER_PREFIX)}
    head = {k: v for k, v in payload["model"].items() if not k.startswith(ENCODER_PREFIX)}
    diff = compare(head, expected)
    if diff:
        raise WeightsError(f"{source}: the decoder / densify weights do not fit its model_config "
                           f"(decoder width {config.get('decoder_width')}, densify norm "
                           f"{config.get('densify_norm')}): {diff.describe('the model')}")
    model.load_state_dict(payload["model"])
    return model.eval()


# ---- imported weights → a checkpoint --------------------------------------------------------------------
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
    """A weights-only pre-training checkpoint (see spark_sparse/checkpoint.py) from imported weights.

    The encoder comes from the file; the decoder, densify layers and mask tokens from a SparK
    "withdecoder" file, else freshly initialised (SparK's initialisation, seeded by ``seed``).
    Options left None take the file's record, else ``spark-sparse pretrain``'s defaults.
    """
    arch = choose_arch(imported, arch)
    head_of_arch = set(head_keys(arch))
    dropped = [k for k in imported.encoder if k in head_of_arch]
    encoder = _adapt({k: v for k, v in imported.encoder.items() if k not in head_of_arch}, arch)
    check_encoder_state(encoder, arch, imported.source)

    rec = imported.recorded
    fixed = spark_head_config(imported.spark_head)  # a SparK head fixes these
    for name, asked in (("decoder_width", decoder_width), ("densify_norm", densify_norm)):
        if asked is not None and name in fixed and asked != fixed[name]:
            raise WeightsError(f"{imported.source}: its decoder has {name.replace('_', ' ')} {fixed[name]!r}, "
                               f"--{name.replace('_', '-')} asks for {asked!r}; leave the option out to keep the "
                               f"file's decoder")
    decoder_width = fixed.get("decoder_width", decoder_width or 768)
    densify_norm = fixed.get("densify_norm", densify_norm or "auto")
    mask_ratio = mask_ratio if mask_ratio is not None else float(rec.get("mask_ratio", 0.6))
    input_size = input_size or int(rec.get("input_size", 224))

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


def weights_checkpoint(model: SparK, arch: str, *, input_size: int, drop_path: float = 0.0,
                       imported_from: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A weights-only checkpoint of ``model`` in the trainer's format (no optimizer, RNG or run state)."""
    import timm

    from . import __version__
    return {
        "format": ckpt.FORMAT, "version": ckpt.VERSION,
        "arch": arch, "encoder_kind": model.encoder_kind,
        "model_config": model_config(model, arch, backend="auto", drop_path=drop_path, input_size=input_size),
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer": None, "optimizer_name": None, "schedule": None, "scaler": None, "rng": None,
        "epoch": 0, "step": 0, "world_size": 1, "args": {}, "metrics": {},
        "imported_from": imported_from or {},
        "versions": {"spark_sparse": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__)},
        "created": time.time(),
    }
