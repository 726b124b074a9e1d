"""The SparK pre-training loop: one process or many (torchrun), exact resume, nothing lost.

A step: set lr and weight decay for the step → draw the global batch's masks from the shared mask
generator and keep this process's rows → forward (under AMP if asked) → all-reduce the loss (a
non-finite loss stops every process before any weight changes) → backward → clip → optimiser step
(:mod:`.update`). Checkpoints are written by rank 0 at the end of each epoch, every
``--ckpt-every`` steps and at the end; SIGTERM / SIGINT save one at the next step boundary and stop
(:mod:`.signals`). Everything random is either restored from the checkpoint (:mod:`.state`,
:mod:`.rng`) or a pure function of (seed, epoch, position) (data order, augmentation), so a resumed
run computes what the uninterrupted one would have. Which checkpoint a run may resume, prune or
overwrite is :mod:`.run_folder`'s decision.

Exit status of :func:`pretrain`: 0 done, 2 bad arguments or an --out it must not use, 3 a
non-finite loss or gradient, 130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint, and
1 for any other error (after the data workers are ended: a failed run never hangs).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, Optional

import torch
from torch import nn

from ..allocator import keep_freed_memory, malloc_setting
from ..io import checkpoint as ckpt
from ..masks import random_visible
from ..openmp import choose_spin
from ..precision import amp_dtype, autocast
from ..choices import routing_from_env
from ..routing import cache_path, check_routing, get_routing, routing_mode, tuning_stats
from ..spark import SparK, build_spark, model_config
from ..step_timer import StepTimer, split_of
from .config import ENCODER_KINDS, check_args, drop_path, peak_lr, with_defaults
from .data import DataConfig, UnreadableFiles, batches_within, build_loader, data_failure, shutdown_workers
from .distributed import Processes, barrier, broadcast_object, init_processes, shutdown
from .monitor import Monitor
from .resources import plan_threads
from .rng import seed_everything
from .run_folder import ResumePlan, RunFolderError, claim, lock_folder, plan_resume
from .schedule import Schedule, build_optimizer, lamb_betas, warmup_steps
from .signals import StopSignals
from .state import check_resumable, load_training_state, training_payload
from .sync_batchnorm import convert_sync_batchnorm
from .exits import EXIT_BAD_INPUT, EXIT_NON_FINITE
from .update import NonFiniteError, apply_update
from .visualise import Reconstructions

__all__ = ["Trainer", "pretrain", "EXIT_NON_FINITE", "EXIT_BAD_INPUT", "NonFiniteError"]


class Trainer:
    """A pre-training run from ``args``: the options of ``spark-sparse pretrain`` by their attribute
    names; any left out take the command line's defaults (``config.with_defaults``)."""

    def __init__(self, args, procs: Optional[Processes] = None):
        args = with_defaults(args)
        check_args(args)
        self.args = args
        self.procs = procs or init_processes(args.device)
        self.device = self.procs.device
        self.out = args.out
        world = self.procs.world
        if args.batch_size % world:
            raise ValueError(f"--batch-size {args.batch_size} is the global batch: it must divide evenly over "
                             f"the {world} processes")
        self.global_batch = args.batch_size
        self.local_batch = args.batch_size // world
        self.amp = amp_dtype(args.amp, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        seed_everything(args.seed)  # the same initial weights on every process
        self.model = self._build_model()
        self.ddp = self._wrap(self.model)
        self.optimizer = build_optimizer(self.model, args.opt, lr=0.0, betas=lamb_betas(args.arch))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None
        seed_everything(args.seed + self.procs.rank)  # drop-path draws differ per process

        keep = self.device.type == "cpu" and args.keep_freed_memory
        self.memory = keep_freed_memory() if keep else malloc_setting()
        self.threads = plan_threads(self.device.type, self.procs.local_world, args.workers,
                                    os.environ.get("OMP_NUM_THREADS"), default_threads=torch.get_num_threads())
        torch.set_num_threads(self.threads.compute_threads)
        self.openmp_wait = choose_spin(getattr(args, "shared_cpu", False))  # the command line's choice, if it ran
        workers = self.threads.workers
        if args.data:  # a large tree on a network file system takes a while to list
            self.log(f"looking for images under {args.data} ...")
        self.loader, self.sampler, self.source = build_loader(DataConfig(
            args.data, args.input_size, self.local_batch, workers, args.seed, self.procs.rank, world,
            pin_memory=self.device.type == "cuda", exclude=args.out))
        self.data_fingerprint = self.source.fingerprint()  # recorded in checkpoints, checked on resume
        if args.data and all(os.path.isdir(os.path.join(args.data, d)) for d in ("train", "val")):
            self.warn(f"--data {args.data} holds both train/ and val/, and every image under it is used: to "
                      f"pre-train on the training images only, pass {os.path.join(args.data, 'train')}")
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = args.steps or int(round(args.epochs * self.steps_per_epoch))
        if self.total_steps < 1:
            raise ValueError(f"--epochs {args.epochs} × {self.steps_per_epoch} steps per epoch rounds to 0 steps: "
                             f"give more --epochs or --steps")
        warmup, note = warmup_steps(args.warmup_epochs, self.steps_per_epoch, self.total_steps)
        if note:
            self.warn(note)
        self.schedule = Schedule(peak_lr(args, self.global_batch), warmup, self.total_steps, args.wd, args.wd_end)
        self.mask_generator = torch.Generator().manual_seed(args.seed)
        self.grid = (args.input_size // self.model.patch_size,) * 2
        self.epoch, self.batch, self.step = 0, 0, 0
        self.unreadable = UnreadableFiles()
        self.last_loss = float("nan")
        self.stop = StopSignals()
        self.run_id: Optional[str] = None
        self.folder_lock = None  # rank 0 holds --out while it runs (run_folder.lock_folder)
        self.step_timer: Optional[StepTimer] = None  # the running step's phases, when they are timed
        try:
            self.resumed_from = self._resume()
        except BaseException:
            self.close()  # a refused resume releases --out and the data workers at once
            raise
        self.monitor = Monitor(self.out, self.procs.is_main, self.total_steps, self.step, args.log_every,
                               args.progress)
        self.reconstructions = Reconstructions(self.monitor, self.procs.is_main, args.vis_every, args.vis_images,
                                               self.total_steps, self.model.patch_size)

    # ---- construction ------------------------------------------------------------------------------
    def _build_model(self) -> SparK:
        a = self.args
        model = build_spark(a.arch, encoder_kind=ENCODER_KINDS[a.encoder], backend=a.backend,
                            drop_path=drop_path(a), decoder_width=a.decoder_width, mask_ratio=a.mask_ratio,
                            densify_norm=a.densify_norm, decoder_checkpointing=a.decoder_checkpointing,
                            encoder_checkpointing=a.encoder_checkpointing)
        if self.procs.distributed:
            convert_sync_batchnorm(model)  # BatchNorm statistics over the global batch's active sites
        return model.to(self.device).train()

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.procs.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def model_config(self) -> Dict:
        return model_config(self.model, self.args.arch, backend=self.args.backend, drop_path=drop_path(self.args),
                            input_size=self.args.input_size)

    # ---- checkpoints -------------------------------------------------------------------------------
    def _resume(self) -> Optional[str]:
        """Rank 0 decides (so every process resumes from the same file, or all stop); all load it."""
        decision = {"plan": None, "error": None}
        payload = None
        if self.procs.is_main:
            try:
                # first of all: a run still writing here keeps its folder, temporaries included
                self.folder_lock = lock_folder(self.out)
                ckpt.remove_stale_temporaries(self.out)
                plan = plan_resume(self.out, self.args.resume, force=self.args.force)
                if plan.path is not None:  # checked before the folder is claimed: a refusal writes nothing
                    payload = plan.payload if plan.payload is not None else ckpt.load(plan.path)
                    check_resumable(self, payload)
                claim(self.out, plan)
                decision["plan"] = (plan.path, plan.run_id)
                for note in plan.notes:
                    self.warn(note)
            except (ckpt.CheckpointError, ValueError, OSError) as e:  # every process learns of it, none waits
                text = f"{self.out}: {e.strerror or e}" if isinstance(e, OSError) else str(e)
                kind = type(e).__name__ if isinstance(e, (ckpt.CheckpointError, RunFolderError)) else "ValueError"
                decision["error"] = (kind, text)
                if self.folder_lock is not None:
                    self.folder_lock.release(undo=True)
                    self.folder_lock = None
        decision = broadcast_object(decision, self.procs)
        if decision["error"]:
            kind, text = decision["error"]
            errors = {"CheckpointError": ckpt.CheckpointError, "RunFolderError": RunFolderError}
            raise errors.get(kind, ValueError)(text)
        plan = ResumePlan(*decision["plan"])
        self.run_id = plan.run_id
        if plan.path is None:
            return None
        if payload is None:  # another process: rank 0 checked this file, each process reads it
            try:
                payload = ckpt.load(plan.path)
            except ckpt.CheckpointError:
                raise ckpt.CheckpointError(f"process {self.procs.rank} cannot read {plan.path}, which rank 0 resumes "
                                           f"from: with several nodes --out must be on a shared file system")
        load_training_state(self, payload)
        return plan.path

    def checkpoint_payload(self) -> Optional[Dict]:
        return training_payload(self)

    def save_checkpoint(self) -> Optional[str]:
        self.monitor.flush()  # the metrics up to this step are on disk before the checkpoint that ends them
        payload = self.checkpoint_payload()
        path = None
        if payload is not None:
            path = ckpt.checkpoint_path(self.out, self.step, self.run_id)
            ckpt.save_atomic(payload, path)
            ckpt.prune(self.out, self.args.keep_ckpts, self.run_id)
        barrier(self.procs)
        return path

    # ---- one step ----------------------------------------------------------------------------------
    def next_visible(self) -> torch.Tensor:
        """This process's rows of the global batch's masks (every process draws the same global masks)."""
        visible = random_visible(self.global_batch, self.grid, self.args.mask_ratio, generator=self.mask_generator)
        return visible[self.procs.rank::self.procs.world].to(self.device, non_blocking=True)

    def compute_loss(self, images: torch.Tensor, visible: torch.Tensor, with_reconstruction: bool):
        """Forward pass: loss, or (loss, reconstruction); its phases go to this step's timer."""
        with autocast(self.device, self.amp):
            return self.ddp(images, visible, return_reconstruction=with_reconstruction, probe=self.step_timer)

    def train_step(self, images: torch.Tensor, visible: torch.Tensor, with_reconstruction: bool, skipped,
                   timer: Optional[StepTimer] = None):
        timer = self.step_timer = timer or StepTimer(enabled=False)
        lr, wd = self.schedule.apply(self.optimizer, self.step)
        out = self.compute_loss(images, visible, with_reconstruction)
        loss, reconstruction = out if with_reconstruction else (out, None)
        update = apply_update(loss, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                              clip=self.args.clip, procs=self.procs, skipped=len(skipped),
                              stop_requested=self.stop.received is not None,
                              where=f"step {self.step + 1} (epoch {self.epoch})", timer=timer)
        if update.stop:  # decided together, so that every process takes part in the checkpoint's collectives
            self.stop.received = self.stop.received or "SIGTERM"
        self._count_unreadable(skipped, update.skipped)
        return {**update.metrics, "lr": lr, "wd": wd}, reconstruction, update.stop

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self) -> int:
        """Train to the end; returns the exit status. The data workers are ended on every way out."""
        try:
            if self.resumed_from:
                self.log(f"resumed from {self.resumed_from}: step {self.step}, epoch {self.epoch}, batch {self.batch}")
            if self.step >= self.total_steps:
                self.log(f"already finished: {self.step} of {self.total_steps} steps done in {self.out}")
                return 0
            self.log(self.describe())
            with self.stop:
                self._loop()
        except NonFiniteError as e:
            last = ckpt.list_checkpoints(self.out)
            self.log(f"ERROR: {e}. The last good checkpoint is "
                     f"{last[-1][1] if last else 'none (no checkpoint was written yet)'}; it is left as it was. "
                     f"Try a lower --base-lr or --lr, --amp off, or check the data.")
            return EXIT_NON_FINITE
        finally:
            self.close()
        return 0

    def close(self) -> None:
        """End the data workers, close the logs and release --out (safe to call twice)."""
        shutdown_workers(self.loader)
        if getattr(self, "monitor", None) is not None:
            self.monitor.close()
        if getattr(self, "folder_lock", None) is not None:
            self.folder_lock.release()
            self.folder_lock = None

    def _loop(self) -> None:
        a = self.args
        while self.step < self.total_steps:
            self.sampler.set_position(self.epoch, self.batch)
            tick = time.perf_counter()
            for images, skipped in batches_within(self.loader, a.data_timeout):
                data_time = time.perf_counter() - tick
                images = images.to(self.device, non_blocking=True)
                visible = self.next_visible()
                want_vis = self.reconstructions.due(self.step + 1, self.batch + 1 >= self.steps_per_epoch)
                timer = StepTimer(self.device, enabled=self.monitor.logs(self.step + 1))
                timer.add("data", data_time)
                metrics, reconstruction, stop = self.train_step(images, visible, want_vis, skipped, timer)
                self.step += 1
                self.batch += 1
                epoch_done = self.batch >= self.steps_per_epoch
                if epoch_done:
                    self.epoch, self.batch = self.epoch + 1, 0
                self.last_loss = metrics["loss"]
                step_time = time.perf_counter() - tick
                metrics.update(img_per_s=self.global_batch / max(step_time, 1e-9), data_time=data_time,
                               step_time=step_time, skipped_images=float(self.unreadable.reads))
                metrics.update({f"step_ms/{name}": ms for name, ms in split_of(timer.ms).items()})
                self.monitor.step(self.step, self.epoch if not epoch_done else self.epoch - 1, metrics)
                if reconstruction is not None:
                    path = self.reconstructions.save(self.step, images, visible, reconstruction)
                    self.log(f"reconstructions (input / masked / reconstruction) → {path}")
                finished = self.step >= self.total_steps
                if epoch_done or finished or stop or (a.ckpt_every > 0 and self.step % a.ckpt_every == 0):
                    path = self.save_checkpoint()
                    if stop:
                        self.log(f"stopped by {self.stop.received} after step {self.step}; checkpoint {path} "
                                 f"(rerun with --resume auto to continue)")
                        raise SystemExit(self.stop.exit_code())
                if finished or epoch_done:
                    break
                tick = time.perf_counter()
        self.log(f"done: {self.step} steps, last loss {self.last_loss:.4f}, {self.unreadable.summary()}; "
                 f"checkpoints in {ckpt.checkpoint_dir(self.out)}")
        if get_routing() == "measured":
            t = tuning_stats()
            waiting = f", {t['pending']} still being measured" if t["pending"] else ""
            self.log(f"routing: {t['tuned']} layer shape(s) measured in this run (tuning added about "
                     f"{t['seconds']:.1f} s), {t['cached']} read from the routing cache{waiting}")

    def _count_unreadable(self, skipped, reads_everywhere: int) -> None:
        prefix = f"[rank {self.procs.rank}] " if self.procs.distributed else ""
        for name, reason in skipped:
            print(f"{prefix}WARNING: skipped unreadable image {name}: {reason}", flush=True)
        # reads are counted over all processes; the distinct files are those this process met (rank 0 logs)
        self.unreadable.add([name for name, _ in skipped], reads_everywhere)

    def describe(self) -> str:
        a = self.args
        count = len(self.source)
        data = f"{a.data} ({count} images)" if a.data else f"the embedded photographs ({count} crops)"
        recomputed = [part for part in ("encoder", "decoder") if getattr(a, f"{part}_checkpointing")]
        return (f"SparK pre-training: {a.arch} ({self.model.encoder_kind} encoder, densify {self.model.densify_norm}, "
                f"drop path {drop_path(a)}), {a.input_size}px, mask ratio {a.mask_ratio}, data {data}\n"
                f"  {self.procs.world} process(es) on {self.device}, global batch {self.global_batch} "
                f"({self.local_batch} per process), {self.steps_per_epoch} steps/epoch, {self.total_steps} steps, "
                f"warm-up {self.schedule.warmup_steps} steps, peak lr {self.schedule.peak_lr:.3e}, {a.opt}, "
                f"wd {a.wd}→{a.wd_end}, clip {a.clip}, amp {self.amp or 'off'}"
                f"{''.join(f', {part} checkpointing' for part in recomputed)}\n"
                f"  threads: {self.threads.describe()}; OpenMP wait: {self.openmp_wait}\n"
                f"  malloc: {self.memory}\n"
                f"  routing: {self._routing_line()}\n"
                f"  output: {os.path.abspath(self.out)} (run {self.run_id})")

    @staticmethod
    def _routing_line() -> str:
        if get_routing() == "fixed":
            return "fixed (the rule table)"
        return f"measured (decisions cached in {cache_path()}; a new layer shape is timed in its first steps)"

    def log(self, text: str) -> None:
        if self.procs.is_main:
            if getattr(self, "monitor", None) is not None:
                self.monitor.message(text)
            else:
                print(text, flush=True)

    def warn(self, text: str) -> None:
        self.log(f"WARNING: {text}")


def pretrain(args) -> int:
    """Entry point of ``spark-sparse pretrain`` (also under torchrun): ``args`` holds the command's
    options by name (unset ones take their defaults); ``--routing`` holds for the whole run."""
    try:
        routing = with_defaults(args).routing
        if routing is not None:  # refused before the run starts, as a bad $SPARK_SPARSE_ROUTING is
            check_routing(routing)
        else:
            routing_from_env()
    except ValueError as e:
        print(f"spark-sparse pretrain: error: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    with routing_mode(routing):
        return _run(args)


def _run(args) -> int:
    trainer = None
    try:
        try:
            trainer = Trainer(args)
        except (ValueError, FileNotFoundError, FileExistsError, ckpt.CheckpointError) as e:
            # what the user asked for cannot work: say so plainly (a traceback would bury it)
            print(f"spark-sparse pretrain: error: {e}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        try:
            return trainer.fit()
        except KeyboardInterrupt:  # a second Ctrl-C (or one before training began): no checkpoint
            last = ckpt.list_checkpoints(trainer.out)
            print(f"spark-sparse pretrain: interrupted before a step boundary: no checkpoint saved; the newest "
                  f"is {last[-1][1] if last else 'none'}", file=sys.stderr, flush=True)
            return 130
        except RuntimeError as e:  # a checkpoint that could not be written, or data that cannot feed the run
            failure = str(e) if isinstance(e, ckpt.CheckpointError) else data_failure(e)
            if failure is None:
                raise
            last = ckpt.list_checkpoints(trainer.out)
            print(f"spark-sparse pretrain: error: {failure}. The newest checkpoint is "
                  f"{last[-1][1] if last else 'none (none was written yet)'}; rerun the same command to continue "
                  f"from it", file=sys.stderr, flush=True)
            return 1
    finally:
        if trainer is not None:
            trainer.close()
        shutdown()
