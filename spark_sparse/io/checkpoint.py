"""Pre-training checkpoints: the file format, atomic writes, and finding the newest valid one.

Files
-----
``<out>/checkpoints/ckpt-<step, 8 digits>.pt``, one per save; of the files *this run* wrote, the
newest ``--keep-ckpts`` are kept (see "Runs" below). Each is written to a temporary file in the
same folder, flushed and fsync'ed, then renamed over the final name (and the folder fsync'ed)
(:func:`spark_sparse.files.atomic_write`), so a reader only ever sees a complete file: a run
killed while saving leaves a stray ``*.tmp`` (removed on the next start) and the previous
checkpoints intact.
Reading checks the zip container's CRC-32 of every record first, so a truncated or bit-flipped
file is refused (and ``--resume auto`` falls back to the next older one with a warning).

Runs
----
Every checkpoint records the ``run_id`` of the run that wrote it (a random hex string chosen when
a run starts fresh; a run resumed from a checkpoint keeps that checkpoint's id, so an interrupted
and resumed run is one run). The run folder names its run in ``<out>/run.json``
(``{"run_id": …}``). A run prunes, and ``--resume auto`` resumes, only checkpoints carrying its own
id: a file another run wrote (copied in, or left by a run that shared the folder with ``--force``),
a corrupt file and a file without an id (written before ids existed) are never deleted, and if one
already holds the name a save wants, the save goes to ``ckpt-<step>.<first 8 hex digits of the
id>.pt`` instead.

Format (``format == "spark_sparse.pretrain"``, ``version == 1``)
----------------------------------------------------------------
A ``torch.save`` dict of tensors and plain Python values only, loadable with
``torch.load(path, map_location="cpu", weights_only=True)``:

=================  ==========================================================================
key                value
=================  ==========================================================================
format, version    ``"spark_sparse.pretrain"``, ``1`` (readers must check both)
arch               timm model name of the backbone, e.g. ``"resnet50"``
encoder_kind       ``"sparse"`` (SparseEncoder) or ``"masked_dense"`` (SparK's reference encoder)
model_config       how to rebuild the SparK model: ``arch``, ``encoder_kind``, ``backend``,
                   ``drop_path``, ``decoder_width``, ``densify_norm`` ("bn" | "ln"),
                   ``mask_ratio``, ``input_size``, ``patch_size``, ``channels`` (per stage, shallow
                   to deep), ``strides``
model              SparK model ``state_dict`` (fp32, on the CPU):
                   ``encoder.<timm key>`` — exactly the keys of ``timm.create_model(arch)``'s
                   state_dict after the prefix, classifier head (``fc.*`` / ``head.*``) excluded,
                   same shapes and layouts: ``{k[8:]: v for k, v in model.items() if
                   k.startswith("encoder.")}`` loads into the timm model with ``strict=False``
                   (only the head missing);
                   ``densify_norms.<i>.*``, ``densify_projs.<i>.*``, ``mask_tokens.<i>`` (stage i
                   counted from the deepest, i = 0 at stride 32), ``decoder.dec.<i>.*``,
                   ``decoder.proj.*`` — the names of SparK's own checkpoints (theirs prefix the
                   encoder with ``sparse_encoder.sp_cnn.`` and the decoder with ``dense_decoder.``)
optimizer          ``optimizer.state_dict()`` (LAMB or AdamW; groups 'decay' and 'no_decay')
optimizer_name     ``"lamb"`` or ``"adamw"``
schedule           ``{"peak_lr", "warmup_steps", "total_steps", "wd", "wd_end"}`` (lr and wd are
                   pure functions of the step, see schedule.py)
scaler             ``GradScaler.state_dict()`` with ``--amp fp16``, else ``None``
rng                ``{"torch": [ByteTensor per process, rank order], "cuda": [ByteTensor per
                   process] or None, "numpy": [per process: {"name", "keys" (int64 tensor of the uint32 keys),
                   "pos", "has_gauss", "cached_gaussian"}], "python": [per process: (version,
                   [625 ints], gauss)], "mask_generator": ByteTensor (the mask generator is shared:
                   every process draws the global batch's masks), "sampler": {"seed", "epoch",
                   "batch"}}`` — the data order is a pure function of (seed, epoch, batch)
epoch, step        the next epoch to run and the number of optimiser steps done; ``batch`` in
                   ``rng["sampler"]`` is the next batch within ``epoch``
world_size         processes of the run that wrote it
args               the run's command-line arguments (a dict of plain values)
metrics            ``{"loss": last step's loss (mean over processes), "images_seen",
                   "skipped_images": unreadable files skipped so far}``
versions           ``{"spark_sparse", "torch", "timm"}``
created            UNIX time of the save
run_id             the run that wrote it (see "Runs"); absent in files written before run ids
                   existed, None in imported checkpoints
=================  ==========================================================================

Imported checkpoints (``spark-sparse import``, :mod:`spark_sparse.spark_format`) hold weights only:
``model`` (the encoder from the imported file; decoder, densify layers and mask tokens from a SparK
"withdecoder" file, else freshly initialised), ``model_config``, ``arch``, ``encoder_kind``,
``epoch = step = 0``, ``args = {}``, ``versions``, ``created`` and ``imported_from`` (the source
file, its kind and what it recorded, e.g. SparK's epoch); ``optimizer``, ``optimizer_name``,
``schedule``, ``scaler`` and ``rng`` are ``None``. Resuming from one starts the optimiser, the
schedule and the data order fresh (from ``--seed``) on those weights.

Version history: 1 — first format (``run_id`` added later as an optional key: older files without
it still load). :class:`Payload` below is the one place that builds this dict.
"""
from __future__ import annotations

import glob
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch

from .. import __version__
from ..files import atomic_write, file_kind, zip_damage
from ..spark import MODEL_CONFIG_KEYS, model_config
from ..spark_format import OUR_FORMAT

FORMAT = OUR_FORMAT  # what spark_format recognises as ours on import
VERSION = 1
REQUIRED_KEYS = ("format", "version", "arch", "encoder_kind", "model_config", "model", "optimizer", "schedule",
                 "rng", "epoch", "step", "args")
_NAME = re.compile(r"^ckpt-(\d{8,})(?:\.[0-9a-f]{8})?\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (truncated, corrupt, or not one of ours)."""


@dataclass
class Payload:
    """One checkpoint, as the table above describes it. Weights-only checkpoints (imports) leave the
    training state at its defaults (None, step 0)."""
    arch: str
    encoder_kind: str
    model_config: Dict[str, Any]
    model: Dict[str, torch.Tensor]
    optimizer: Optional[Dict[str, Any]] = None
    optimizer_name: Optional[str] = None
    schedule: Optional[Dict[str, Any]] = None
    scaler: Optional[Dict[str, Any]] = None
    rng: Optional[Dict[str, Any]] = None
    epoch: int = 0
    step: int = 0
    world_size: int = 1
    args: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    run_id: Optional[str] = None
    imported_from: Optional[Dict[str, Any]] = None
    versions: Dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> Dict[str, Any]:
        out = {"format": FORMAT, "version": VERSION}
        out.update({k: v for k, v in _fields(self).items() if not (k == "imported_from" and v is None)})
        if not out["versions"]:
            out["versions"] = versions()
        return out


def _fields(obj) -> Dict[str, Any]:
    """A dataclass's fields without ``dataclasses.asdict``'s deep copy (tensors stay as they are)."""
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def versions() -> Dict[str, str]:
    return {"spark_sparse": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__)}


def checkpoint_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def checkpoint_path(out_dir: str, step: int, run_id: Optional[str] = None) -> str:
    """Where a save at ``step`` goes: ``ckpt-<step>.pt``, or with ``run_id`` given and that name held by a
    file of another run, ``ckpt-<step>.<run id[:8]>.pt`` (the other file stays as it is)."""
    plain = os.path.join(checkpoint_dir(out_dir), f"ckpt-{step:08d}.pt")
    if run_id is None or not os.path.exists(plain) or run_of(plain) == run_id:
        return plain
    return os.path.join(checkpoint_dir(out_dir), f"ckpt-{step:08d}.{run_id[:8]}.pt")


def save_atomic(payload: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename: all or nothing."""
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except Exception as e:  # torch reports a full disk as an obscure zip-writer error: say what it means
        raise CheckpointError(f"{path}: could not be written ({type(e).__name__}: {str(e).strip()}); is the disk "
                              f"full or the file over a size limit? Earlier checkpoints are intact") from e


def verify_integrity(path: str) -> None:
    """Check every record's CRC-32 (see :func:`~spark_sparse.files.zip_damage`)."""
    try:
        bad = zip_damage(path)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e}); truncated or corrupt?") from e
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt (checksum mismatch in record {bad})")


def load(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load and validate one checkpoint; raise CheckpointError saying what is wrong with it."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder, not a checkpoint file (pretrain writes them to its --out's "
                              f"checkpoints/)")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    kind = file_kind(path)
    if kind == "safetensors":
        raise CheckpointError(f"{path}: a safetensors weights file (e.g. a timm state dict), not a spark_sparse "
                              f"checkpoint; make one with `spark-sparse import {path} --arch ARCH --out CKPT`")
    if kind != "zip":
        raise CheckpointError(f"{path}: not a spark_sparse checkpoint (checkpoints are torch.save zip archives"
                              f"{'; this is a legacy torch.save file' if kind == 'pickle' else ''}); for timm or "
                              f"SparK weights use `spark-sparse import`")
    verify_integrity(path)
    try:
        with open(path, "rb") as f:  # a file object: torch would pick a loader from a path's extension
            payload = torch.load(f, map_location=map_location, weights_only=True)
    except Exception as e:
        if "weights_only" in str(e):
            raise CheckpointError(f"{path}: an intact file that holds pickled Python objects, not a spark_sparse "
                                  f"checkpoint (those hold tensors and plain values only); for timm or SparK "
                                  f"weights, make one with `spark-sparse import` (whose --trust-file "
                                  f"allows pickled objects from a source you trust)") from e
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e}); truncated or corrupt?") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a spark_sparse pre-training checkpoint; for timm or SparK weights, make "
                              f"one first with `spark-sparse import {path} --arch ARCH --out CKPT`")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('version')!r}, this version of "
                              f"spark_sparse reads version {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    config = payload["model_config"]
    missing = [k for k in MODEL_CONFIG_KEYS if k not in config] if isinstance(config, dict) else list(MODEL_CONFIG_KEYS)
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, its model_config lacks {missing} (the model cannot "
                              f"be rebuilt from it)")
    return payload


def run_of(path: str) -> Optional[str]:
    """The ``run_id`` a checkpoint file records; None when it records none or cannot be read (then no run
    may treat it as its own). Memory-maps the file: the tensors are not read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 — any unreadable file belongs to no run
        return None
    run = payload.get("run_id") if isinstance(payload, dict) and payload.get("format") == FORMAT else None
    return run if isinstance(run, str) else None


def list_checkpoints(out_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of every final-named checkpoint, oldest first."""
    found = []
    for path in glob.glob(os.path.join(checkpoint_dir(out_dir), "ckpt-*.pt")):
        m = _NAME.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_valid(out_dir: str, map_location="cpu", run_id: Optional[str] = None,
                 skipped: Optional[List[Tuple[str, str, bool]]] = None) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The newest checkpoint that loads and validates (and, with ``run_id``, was written by that run).

    Each newer one passed over goes into ``skipped`` as (path, why, unreadable), or, without that
    list, into a warning."""
    def skip(path: str, why: str, unreadable: bool) -> None:
        if skipped is None:
            warnings.warn(f"skipping checkpoint {why}", stacklevel=3)
        else:
            skipped.append((path, why, unreadable))

    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            payload = load(path, map_location)
        except CheckpointError as e:
            skip(path, str(e), True)
            continue
        if run_id is not None and payload.get("run_id") != run_id:
            skip(path, f"{path}: written by another run ({payload.get('run_id')}), not this folder's run {run_id}",
                 False)
            continue
        return path, payload
    return None


def remove_stale_temporaries(out_dir: str) -> List[str]:
    """Delete the temporaries a killed save left behind (``ckpt-*.pt.<random>.tmp``, as
    :func:`~spark_sparse.files.atomic_write` names them); other files are the user's and stay."""
    stale = glob.glob(os.path.join(checkpoint_dir(out_dir), "ckpt-*.pt.*.tmp"))
    for path in stale:
        os.unlink(path)
    return stale


def prune(out_dir: str, keep: int, run_id: str) -> List[str]:
    """Of the checkpoints run ``run_id`` wrote, keep the newest ``keep`` (all when keep <= 0); files of
    other runs, corrupt files and files without a run id are never touched. Returns the removed paths."""
    if keep <= 0:
        return []
    own = [path for _, path in list_checkpoints(out_dir) if run_of(path) == run_id]
    old = own[:-keep]
    for path in old:
        os.unlink(path)
    return old


def weights_checkpoint(model, arch: str, *, input_size: int, drop_path: float = 0.0,
                       imported_from: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A weights-only checkpoint of SparK ``model`` (no optimizer, RNG or run state)."""
    return Payload(arch=arch, encoder_kind=model.encoder_kind,
                   model_config=model_config(model, arch, backend="auto", drop_path=drop_path, input_size=input_size),
                   model={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                   imported_from=imported_from or {}).to_dict()
