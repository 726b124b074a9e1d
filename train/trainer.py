"""The SparK pre-training loop: one process or many (torchrun), exact resume, nothing lost.

A step: set lr and weight decay for the step → draw the global batch's masks from the shared mask
generator and keep this process's rows → forward (under AMP if asked) → all-reduce the loss (a
non-finite loss stops every process before any weight changes) → backward → clip → optimiser step.
Checkpoints are written by rank 0 at the end of each epoch, every ``--ckpt-every`` steps and at the
end; SIGTERM / SIGINT save one at the next step boundary and stop. Everything random is either
restored from the checkpoint (torch/numpy/python RNGs of every process, the mask generator) or a
pure function of (seed, epoch, position) (data order, augmentation), so a resumed run computes what
the uninterrupted one would have.
"""
from __future__ import annotations

import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..masks import random_visible
from ..spark import SparK, build_spark, model_config
from ..step_timer import StepTimer, split_of
from . import checkpoint as ckpt
from .config import amp_dtype, check_args, drop_path, peak_lr, plain_args
from .data import DataConfig, build_loader
from .distributed import Processes, all_reduce_sum, barrier, broadcast_object, gather_objects, init_processes
from .monitor import Monitor, reconstruction_grid
from .resources import plan_threads
from .schedule import Schedule, build_optimizer, lamb_betas
from .sync_batchnorm import convert_sync_batchnorm

EXIT_NON_FINITE = 3


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


# ---- RNG state as plain values (checkpoints load with weights_only=True) ---------------------------
def capture_rng(device: torch.device) -> Dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": [version, list(state), gauss]}


def restore_rng(state: Dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, args, procs: Optional[Processes] = None):
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

        self.threads = plan_threads(self.device.type, self.procs.local_world, args.workers,
                                    os.environ.get("OMP_NUM_THREADS"), default_threads=torch.get_num_threads())
        torch.set_num_threads(self.threads.compute_threads)
        workers = self.threads.workers
        self.loader, self.sampler, self.source = build_loader(DataConfig(
            args.data, args.input_size, self.local_batch, workers, args.seed, self.procs.rank, world,
            pin_memory=self.device.type == "cuda"))
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = args.steps or int(round(args.epochs * self.steps_per_epoch))
        warmup = int(round(args.warmup_epochs * self.steps_per_epoch))
        if warmup >= self.total_steps:
            warmup = self.total_steps // 10
            self._warn(f"--warmup-epochs {args.warmup_epochs} spans the whole run of {self.total_steps} steps; "
                       f"warming up over {warmup} steps (10 %) instead")
        self.schedule = Schedule(peak_lr(args, self.global_batch), warmup, self.total_steps, args.wd, args.wd_end)
        self.mask_generator = torch.Generator().manual_seed(args.seed)
        self.grid = (args.input_size // self.model.patch_size,) * 2
        self.epoch, self.batch, self.step = 0, 0, 0
        self.skipped_images = 0
        self.last_loss = float("nan")
        self.step_timer: Optional[StepTimer] = None  # the running step's phases, when they are timed
        self._stop_signal = None  # set by the signal handler
        self._stop_now = False    # the processes' joint decision, taken once per step
        self.resumed_from = self._resume()
        self.monitor = Monitor(self.out, self.procs.is_main, self.total_steps, self.step, args.log_every,
                               args.progress)

    # ---- construction ------------------------------------------------------------------------------
    def _build_model(self) -> SparK:
        a = self.args
        model = build_spark(a.arch, encoder_kind=a.encoder, backend=a.backend, drop_path=drop_path(a),
                            decoder_width=a.decoder_width, mask_ratio=a.mask_ratio, densify_norm=a.densify_norm,
                            decoder_checkpointing=getattr(a, "decoder_checkpointing", False))
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
        """Rank 0 picks the checkpoint (so every process resumes from the same one); all load it."""
        choice = self.args.resume
        decision = {"path": None, "error": None}
        if self.procs.is_main:
            ckpt.remove_stale_temporaries(self.out)
            if choice == "none":
                if ckpt.list_checkpoints(self.out):
                    decision["error"] = (f"{ckpt.checkpoint_dir(self.out)} already holds checkpoints: continue them "
                                         f"with --resume auto, or choose another --out")
            elif choice == "auto":
                found = ckpt.latest_valid(self.out)
                decision["path"] = found[0] if found else None
            else:
                decision["path"] = choice
        decision = broadcast_object(decision, self.procs)  # every process stops, or resumes from the same file
        if decision["error"]:
            raise FileExistsError(decision["error"])
        path = decision["path"]
        if path is None:
            return None
        try:
            payload = ckpt.load(path)
        except ckpt.CheckpointError:
            if self.procs.is_main:
                raise
            raise ckpt.CheckpointError(f"process {self.procs.rank} cannot read {path}, which rank 0 resumes from: "
                                       f"with several nodes --out must be on a shared file system")
        self.load_state(payload)
        return path

    def load_state(self, payload: Dict) -> None:
        if payload["arch"] != self.args.arch or payload["encoder_kind"] != self.model.encoder_kind:
            raise ValueError(f"the checkpoint is a {payload['arch']} ({payload['encoder_kind']} encoder), this run a "
                             f"{self.args.arch} ({self.model.encoder_kind}): pass the same --arch/--encoder, or "
                             f"another --out")
        saved, mine = payload.get("model_config") or {}, self.model_config()
        differs = [f"--{k.replace('_', '-')} {saved[k]!r} (this run: {mine[k]!r})"
                   for k in ("decoder_width", "densify_norm") if k in saved and saved[k] != mine[k]]
        if differs:
            raise ValueError(f"the checkpoint's model was built with {', '.join(differs)}: pass the same to resume "
                             f"from it")
        self.model.load_state_dict(payload["model"])
        if payload["optimizer"] is None:  # imported weights (spark-sparse import): a fresh optimiser
            self._log("the checkpoint has no optimizer state (imported weights): the optimizer starts fresh")
        else:
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        rng = payload["rng"]
        if rng is None:  # imported weights: no run to continue, start at the checkpoint's step with --seed
            self.epoch, self.batch, self.step = payload["epoch"], 0, payload["step"]
            return
        if payload.get("world_size", 1) == self.procs.world:
            restore_rng({k: rng[k][self.procs.rank] if isinstance(rng[k], list) and k != "sampler" else rng[k]
                         for k in ("torch", "cuda", "numpy", "python")}, self.device)
        else:
            seed_everything(self.args.seed + self.procs.rank + payload["step"])
            self._warn(f"the checkpoint was written by {payload.get('world_size')} processes, this run has "
                       f"{self.procs.world}: data order and masks continue exactly, drop-path draws do not")
        self.mask_generator.set_state(rng["mask_generator"])
        self.epoch, self.batch, self.step = payload["epoch"], rng["sampler"]["batch"], payload["step"]
        self.last_loss = payload.get("metrics", {}).get("loss", float("nan"))
        self.skipped_images = int(payload.get("metrics", {}).get("skipped_images", 0))
        changed = {k: (v, getattr(self.args, k, None)) for k, v in payload["args"].items()
                   if k not in ("out", "resume", "progress", "workers", "device", "log_every", "vis_every",
                                "vis_images", "keep_ckpts", "ckpt_every")
                   and getattr(self.args, k, None) != v}
        if changed:
            self._warn("resuming with changed arguments (checkpoint → now): " +
                       ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items()))

    def checkpoint_payload(self) -> Optional[Dict]:
        """The checkpoint dict (on rank 0; None elsewhere). Every process must call it (it gathers RNGs)."""
        states = gather_objects(capture_rng(self.device), self.procs)
        if not self.procs.is_main:
            return None
        model_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return {
            "format": ckpt.FORMAT, "version": ckpt.VERSION,
            "arch": self.args.arch, "encoder_kind": self.model.encoder_kind, "model_config": self.model_config(),
            "model": model_state, "optimizer": self.optimizer.state_dict(), "optimizer_name": self.args.opt,
            "schedule": {"peak_lr": self.schedule.peak_lr, "warmup_steps": self.schedule.warmup_steps,
                         "total_steps": self.schedule.total_steps, "wd": self.schedule.wd,
                         "wd_end": self.schedule.wd_end},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"torch": [s["torch"] for s in states], "cuda": [s["cuda"] for s in states],
                    "numpy": [s["numpy"] for s in states], "python": [s["python"] for s in states],
                    "mask_generator": self.mask_generator.get_state(),
                    "sampler": {"seed": self.args.seed, "epoch": self.epoch, "batch": self.batch}},
            "epoch": self.epoch, "step": self.step, "world_size": self.procs.world,
            "args": plain_args(self.args),
            "metrics": {"loss": self.last_loss, "images_seen": self.step * self.global_batch,
                        "skipped_images": self.skipped_images},
            "versions": {"spark_sparse": __version__, "torch": str(torch.__version__), "timm": str(_timm_version())},
            "created": time.time(),
        }

    def save_checkpoint(self) -> Optional[str]:
        payload = self.checkpoint_payload()
        path = None
        if payload is not None:
            path = ckpt.checkpoint_path(self.out, self.step)
            ckpt.save_atomic(payload, path)
            ckpt.prune(self.out, self.args.keep_ckpts)
        barrier(self.procs)
        return path

    # ---- one step ----------------------------------------------------------------------------------
    def next_visible(self) -> torch.Tensor:
        """This process's rows of the global batch's masks (every process draws the same global masks)."""
        visible = random_visible(self.global_batch, self.grid, self.args.mask_ratio, generator=self.mask_generator)
        return visible[self.procs.rank::self.procs.world].to(self.device, non_blocking=True)

    def compute_loss(self, images: torch.Tensor, visible: torch.Tensor, with_reconstruction: bool):
        """Forward pass: loss, or (loss, reconstruction); its phases go to this step's timer."""
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)
                    if self.amp else nullcontext())
        with autocast:
            return self.ddp(images, visible, return_reconstruction=with_reconstruction, probe=self.step_timer)

    def train_step(self, images: torch.Tensor, visible: torch.Tensor, with_reconstruction: bool,
                   skipped: int, timer: Optional[StepTimer] = None) -> Tuple[Dict[str, float], Optional[torch.Tensor]]:
        timer = self.step_timer = timer or StepTimer(enabled=False)
        lr, wd = self.schedule.apply(self.optimizer, self.step)
        out = self.compute_loss(images, visible, with_reconstruction)
        loss, reconstruction = out if with_reconstruction else (out, None)
        stop = 1.0 if self._stop_signal else 0.0
        shared = all_reduce_sum(torch.stack([loss.detach().float(), loss.new_tensor(float(skipped)),
                                             loss.new_tensor(stop)]), self.procs)
        loss_sum, skipped_all, stop_all = shared.tolist()
        loss_value = loss_sum / self.procs.world  # every process averages over the same number of patches
        if not np.isfinite(loss_value):
            raise NonFiniteError(f"the loss is {loss_value} at step {self.step + 1} (epoch {self.epoch}); training "
                                 f"stopped before updating the weights")
        self.optimizer.zero_grad(set_to_none=True)
        timer.backward(lambda: (self.scaler.scale(loss) if self.scaler is not None else loss).backward())
        optimizer_start = timer.now()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.args.clip if self.args.clip > 0 else float("inf"))
        grad_norm = float(grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update itself when fp16 gradients overflowed
            self.scaler.update()
        else:
            if not np.isfinite(grad_norm):
                raise NonFiniteError(f"the gradient norm is {grad_norm} at step {self.step + 1} (epoch {self.epoch}, "
                                     f"loss {loss_value:.4f}); training stopped before updating the weights")
            self.optimizer.step()
        timer.add("optimizer", timer.now() - optimizer_start)
        # decided together (a signal that arrives after this all-reduce is acted on at the next step),
        # so that every process takes part in the checkpoint's collectives
        self._stop_now = stop_all > 0
        if self._stop_now:
            self._stop_signal = self._stop_signal or "SIGTERM on another process"
        self.skipped_images += int(skipped_all)
        return {"loss": loss_value, "lr": lr, "wd": wd, "grad_norm": grad_norm}, reconstruction

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self) -> int:
        if self.resumed_from:
            self._log(f"resumed from {self.resumed_from}: step {self.step}, epoch {self.epoch}, batch {self.batch}")
        if self.step >= self.total_steps:
            self._log(f"already finished: {self.step} of {self.total_steps} steps done in {self.out}")
            self.monitor.close()
            return 0
        self._log(self.describe())
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in previous:
            signal.signal(s, self._on_signal)
        try:
            self._loop()
        except NonFiniteError as e:
            last = ckpt.list_checkpoints(self.out)
            self._log(f"ERROR: {e}. The last good checkpoint is "
                      f"{last[-1][1] if last else 'none (no checkpoint was written yet)'}; it is left as it was. "
                      f"Try a lower --base-lr or --lr, --amp off, or check the data.")
            return EXIT_NON_FINITE
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.monitor.close()
        return 0

    def _loop(self) -> None:
        a = self.args
        while self.step < self.total_steps:
            self.sampler.set_position(self.epoch, self.batch)
            tick = time.perf_counter()
            for images, skipped in self.loader:
                data_time = time.perf_counter() - tick
                self._report_skipped(skipped)
                images = images.to(self.device, non_blocking=True)
                visible = self.next_visible()
                want_vis = self._vis_due(self.step + 1, self.batch + 1 >= self.steps_per_epoch)
                timer = StepTimer(self.device, enabled=self.monitor.logs(self.step + 1))
                timer.add("data", data_time)
                metrics, reconstruction = self.train_step(images, visible, want_vis, len(skipped), timer)
                self.step += 1
                self.batch += 1
                epoch_done = self.batch >= self.steps_per_epoch
                if epoch_done:
                    self.epoch, self.batch = self.epoch + 1, 0
                self.last_loss = metrics["loss"]
                step_time = time.perf_counter() - tick
                metrics.update(img_per_s=self.global_batch / max(step_time, 1e-9), data_time=data_time,
                               step_time=step_time, skipped_images=float(self.skipped_images))
                metrics.update({f"step_ms/{name}": ms for name, ms in split_of(timer.ms).items()})
                self.monitor.step(self.step, self.epoch if not epoch_done else self.epoch - 1, metrics)
                if reconstruction is not None:
                    self._save_grid(images, visible, reconstruction)
                finished = self.step >= self.total_steps
                if epoch_done or finished or self._stop_now or (a.ckpt_every > 0 and self.step % a.ckpt_every == 0):
                    path = self.save_checkpoint()
                    if self._stop_now:
                        self._log(f"stopped by {self._stop_signal} after step {self.step}; checkpoint {path} "
                                  f"(rerun with --resume auto to continue)")
                        raise SystemExit(130 if self._stop_signal == "SIGINT" else 143)
                if finished or epoch_done:
                    break
                tick = time.perf_counter()
        self._log(f"done: {self.step} steps, last loss {self.last_loss:.4f}, {self.skipped_images} unreadable "
                  f"images skipped; checkpoints in {ckpt.checkpoint_dir(self.out)}")

    def _vis_due(self, step: int, ends_epoch: bool) -> bool:
        every = self.args.vis_every
        return self.procs.is_main and (step == 1 or ends_epoch or step == self.total_steps
                                       or (every > 0 and step % every == 0))

    def _save_grid(self, images: torch.Tensor, visible: torch.Tensor, reconstruction: torch.Tensor) -> None:
        n = min(self.args.vis_images, images.shape[0])
        grid = reconstruction_grid(images[:n], visible[:n], reconstruction[:n], self.model.patch_size)
        path = self.monitor.images(self.step, grid)
        self._log(f"reconstructions (input / masked / reconstruction) → {path}")

    def _report_skipped(self, skipped) -> None:
        for name, reason in skipped:
            prefix = f"[rank {self.procs.rank}] " if self.procs.distributed else ""
            print(f"{prefix}WARNING: skipped unreadable image {name}: {reason}", flush=True)

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
        self._stop_signal = signal.Signals(signum).name  # no printing here: a handler may interrupt a print

    def describe(self) -> str:
        a = self.args
        data = a.data or f"the embedded photographs ({len(self.source)} crops)"
        return (f"SparK pre-training: {a.arch} ({self.model.encoder_kind} encoder, densify {self.model.densify_norm}, "
                f"drop path {drop_path(a)}), {a.input_size}px, mask ratio {a.mask_ratio}, data {data}\n"
                f"  {self.procs.world} process(es) on {self.device}, global batch {self.global_batch} "
                f"({self.local_batch} per process), {self.steps_per_epoch} steps/epoch, {self.total_steps} steps, "
                f"warm-up {self.schedule.warmup_steps} steps, peak lr {self.schedule.peak_lr:.3e}, {a.opt}, "
                f"wd {a.wd}→{a.wd_end}, clip {a.clip}, amp {self.amp or 'off'}"
                f"{', decoder checkpointing' if getattr(a, 'decoder_checkpointing', False) else ''}\n"
                f"  threads: {self.threads.describe()}\n"
                f"  output: {os.path.abspath(self.out)}")

    def _log(self, text: str) -> None:
        if self.procs.is_main:
            if getattr(self, "monitor", None) is not None:
                self.monitor.message(text)
            else:
                print(text, flush=True)

    def _warn(self, text: str) -> None:
        self._log(f"WARNING: {text}")


def _timm_version() -> str:
    import timm
    return timm.__version__


EXIT_BAD_INPUT = 2


def pretrain(args) -> int:
    """Entry point of ``spark-sparse pretrain`` (also under torchrun)."""
    from .distributed import shutdown
    try:
        try:
            trainer = Trainer(args)
        except (ValueError, FileNotFoundError, FileExistsError, ckpt.CheckpointError) as e:
            # what the user asked for cannot work: say so plainly (a traceback would bury it)
            print(f"spark-sparse pretrain: error: {e}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        return trainer.fit()
    finally:
        shutdown()
