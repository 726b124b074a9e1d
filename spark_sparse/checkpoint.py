"""Pre-training checkpoints: the file format, atomic writes, and finding the newest valid one.

Files
-----
``<out>/checkpoints/ckpt-<step, 8 digits>.pt``, one per save, the last ``--keep-ckpts`` kept. Each is
written to a temporary file in the same folder, flushed and fsync'ed, then renamed over the final
name (and the folder fsync'ed), so a reader only ever sees a complete file: a run killed while
saving leaves a stray ``*.tmp`` (removed on the next start) and the previous checkpoints intact.
Reading checks the zip container's CRC-32 of every record first, so a truncated or bit-flipped
file is refused (and ``--resume auto`` falls back to the next older one with a warning).

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
                   process] or None, "numpy": [per process: {"name", "keys" (uint32 tensor),
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
=================  ==========================================================================

Imported checkpoints (``spark-sparse import``, :mod:`spark_sparse.spark_format`) hold weights only:
``model`` (the encoder from the imported file; decoder, densify layers and mask tokens from a SparK
"withdecoder" file, else freshly initialised), ``model_config``, ``arch``, ``encoder_kind``,
``epoch = step = 0``, ``args = {}``, ``versions``, ``created`` and ``imported_from`` (the source
file, its kind and what it recorded, e.g. SparK's epoch); ``optimizer``, ``optimizer_name``,
``schedule``, ``scaler`` and ``rng`` are ``None``. Resuming from one starts the optimiser, the
schedule and the data order fresh (from ``--seed``) on those weights.

Version history: 1 — first format.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
import warnings
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import torch

FORMAT = "spark_sparse.pretrain"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "arch", "encoder_kind", "model_config", "model", "optimizer", "schedule",
                 "rng", "epoch", "step", "args")
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (truncated, corrupt, or not one of ours)."""


def checkpoint_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def checkpoint_path(out_dir: str, step: int) -> str:
    return os.path.join(checkpoint_dir(out_dir), f"ckpt-{step:08d}.pt")


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # platforms without directory handles
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(payload: Dict[str, Any], path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename: all or nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def verify_integrity(path: str) -> None:
    """Check every record's CRC-32: a ``torch.save`` file is a zip archive, but ``torch.load`` does not
    check them, so a flipped bit inside a tensor would otherwise load silently."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e}); truncated or corrupt?") from e
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt (checksum mismatch in record {bad})")


def load(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load and validate one checkpoint; raise CheckpointError saying what is wrong with it."""
    verify_integrity(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e}); truncated or corrupt?") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a spark_sparse pre-training checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('version')!r}, this version of "
                              f"spark_sparse reads version {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    return payload


def list_checkpoints(out_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of every final-named checkpoint, oldest first."""
    found = []
    for path in glob.glob(os.path.join(checkpoint_dir(out_dir), "ckpt-*.pt")):
        m = _NAME.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_valid(out_dir: str, map_location="cpu") -> Optional[Tuple[str, Dict[str, Any]]]:
    """The newest checkpoint that loads and validates; broken ones are skipped with a warning."""
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint {e}", stacklevel=2)
    return None


def remove_stale_temporaries(out_dir: str) -> List[str]:
    """Delete ``*.tmp`` files a killed save left behind."""
    stale = glob.glob(os.path.join(checkpoint_dir(out_dir), "*.tmp"))
    for path in stale:
        os.unlink(path)
    return stale


def prune(out_dir: str, keep: int) -> List[str]:
    """Keep the newest ``keep`` checkpoints (all of them when keep <= 0); return the removed paths."""
    if keep <= 0:
        return []
    old = [path for _, path in list_checkpoints(out_dir)[:-keep]]
    for path in old:
        os.unlink(path)
    return old
