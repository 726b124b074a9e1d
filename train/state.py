"""A training run's state in and out of a checkpoint (:class:`spark_sparse.io.checkpoint.Payload`).

Everything a resumed run needs to compute what the uninterrupted one would have: weights,
optimiser, scaler, every process's RNGs, the shared mask generator and the data position.
"""
from __future__ import annotations

from typing import Dict, Optional

from ..io.checkpoint import Payload
from .config import plain_args
from .distributed import gather_objects
from .rng import capture_rng, restore_rng, seed_everything

# Arguments that may change between an interrupted run and its resumption without a warning (none
# changes what is computed: checkpointing recomputes the same numbers, e.g. to resume with less memory).
FREE_TO_CHANGE = ("out", "resume", "progress", "shared_cpu", "workers", "device", "log_every", "vis_every",
                  "vis_images", "keep_ckpts", "ckpt_every", "decoder_checkpointing", "encoder_checkpointing",
                  "data_timeout")


def training_payload(t) -> Optional[Dict]:
    """Trainer ``t``'s checkpoint dict on rank 0 (None elsewhere); every process must call it (it gathers RNGs)."""
    states = gather_objects(capture_rng(t.device), t.procs)
    if not t.procs.is_main:
        return None
    s = t.schedule
    return Payload(
        arch=t.args.arch, encoder_kind=t.model.encoder_kind, model_config=t.model_config(),
        model={k: v.detach().to("cpu", copy=True) for k, v in t.model.state_dict().items()},
        optimizer=t.optimizer.state_dict(), optimizer_name=t.args.opt,
        schedule={"peak_lr": s.peak_lr, "warmup_steps": s.warmup_steps, "total_steps": s.total_steps, "wd": s.wd,
                  "wd_end": s.wd_end},
        scaler=t.scaler.state_dict() if t.scaler is not None else None,
        rng={**{k: [st[k] for st in states] for k in ("torch", "cuda", "numpy", "python")},
             "mask_generator": t.mask_generator.get_state(),
             "sampler": {"seed": t.args.seed, "epoch": t.epoch, "batch": t.batch, "images": len(t.source),
                         "fingerprint": t.data_fingerprint}},
        epoch=t.epoch, step=t.step, world_size=t.procs.world, args=plain_args(t.args),
        metrics={"loss": t.last_loss, "images_seen": t.step * t.global_batch, **t.unreadable.state()},
        run_id=t.run_id,
    ).to_dict()


def check_resumable(t, payload: Dict) -> None:
    """Refuse (ValueError) a checkpoint trainer ``t`` cannot continue: another model, or, unless --force,
    another global batch size or data set. It only reads, so a refused resume has written nothing."""
    if payload["arch"] != t.args.arch or payload["encoder_kind"] != t.model.encoder_kind:
        raise ValueError(f"the checkpoint is a {payload['arch']} ({payload['encoder_kind']} encoder), this run a "
                         f"{t.args.arch} ({t.model.encoder_kind}): pass the same --arch/--encoder, or another --out")
    saved, mine = payload.get("model_config") or {}, t.model_config()
    differs = [f"--{k.replace('_', '-')} {saved[k]!r} (this run: {mine[k]!r})"
               for k in ("decoder_width", "densify_norm") if k in saved and saved[k] != mine[k]]
    if differs:
        raise ValueError(f"the checkpoint's model was built with {', '.join(differs)}: pass the same to resume from it")
    changes = data_changes(t, payload)
    if changes and not t.args.force:
        raise ValueError(f"{changes}: the run would not continue as it was. Resume with the same --batch-size and "
                         f"data, start a new run in another --out, or pass --force to go on anyway")


def load_training_state(t, payload: Dict) -> None:
    """Put a checkpoint's state into trainer ``t`` (:func:`check_resumable` first)."""
    check_resumable(t, payload)
    t.model.load_state_dict(payload["model"])
    if payload["optimizer"] is None:  # imported weights (spark-sparse import): a fresh optimiser
        t.log("the checkpoint has no optimizer state (imported weights): the optimizer starts fresh")
    else:
        t.optimizer.load_state_dict(payload["optimizer"])
    if t.scaler is not None and payload.get("scaler"):
        t.scaler.load_state_dict(payload["scaler"])
    rng = payload["rng"]
    if rng is None:  # imported weights: no run to continue, start at the checkpoint's step with --seed
        t.epoch, t.batch, t.step = payload["epoch"], 0, payload["step"]
        return
    if payload.get("world_size", 1) == t.procs.world:
        restore_rng({k: rng[k][t.procs.rank] if isinstance(rng[k], list) else rng[k]
                     for k in ("torch", "cuda", "numpy", "python")}, t.device)
    else:
        seed_everything(t.args.seed + t.procs.rank + payload["step"])
        t.warn(f"the checkpoint was written by {payload.get('world_size')} processes, this run has "
               f"{t.procs.world}: data order and masks continue exactly, drop-path draws do not")
    changes = data_changes(t, payload)
    if changes:  # only with --force (check_resumable)
        t.warn(f"{changes}: going on (--force); the epochs and the schedule now count in the new setting")
    t.mask_generator.set_state(rng["mask_generator"])
    t.epoch, t.batch, t.step = payload["epoch"], rng["sampler"]["batch"], payload["step"]
    metrics = payload.get("metrics", {})
    t.last_loss = metrics.get("loss", float("nan"))
    t.unreadable.restore(metrics)
    changed = {k: (v, getattr(t.args, k, None)) for k, v in payload["args"].items()
               if k not in FREE_TO_CHANGE and getattr(t.args, k, None) != v}
    if changed:
        t.warn("resuming with changed arguments (checkpoint → now): " +
               ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items()))


def data_changes(t, payload: Dict) -> str:
    """What continuing ``payload`` in trainer ``t`` would change about the data ("" when nothing): its
    position is a batch of an epoch's permutation, so another global batch size or data set would
    change what the remaining epochs and the schedule mean, not continue them."""
    if payload["rng"] is None:  # imported weights: no data position to continue
        return ""
    sampler, saved_batch = payload["rng"]["sampler"], payload["args"].get("batch_size")
    changes = []
    if saved_batch is not None and saved_batch != t.args.batch_size:
        changes.append(f"--batch-size {saved_batch} → {t.args.batch_size} (an epoch is another number of steps)")
    if "fingerprint" in sampler and sampler["fingerprint"] != t.data_fingerprint:
        then, now = sampler["images"], len(t.source)
        changes.append(f"another data set ({then} images then, {now} now" + (", other files" if then == now else "")
                       + ": another order of images)")
    return f"resuming step {payload['step']} with {'; '.join(changes)}" if changes else ""
