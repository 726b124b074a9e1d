"""SparK's optimisation recipe: parameter groups, LAMB, and the per-step lr / weight-decay schedule.

- lr = base_lr × global_batch / 256; linear warm-up from 0.5 % of the peak, then cosine down to
  0.1 % of the peak at the last step;
- weight decay follows a cosine from ``wd`` (0.04) at the first step to ``wd_end`` (0.2) at the last;
- no decay on 1-D parameters (norms, biases, layer scales), biases and mask tokens;
- LAMB (timm) with betas (0.9, 0.95) for ResNets and (0.9, 0.999) for ConvNeXts, gradients clipped
  to a global norm of 5 by the trainer.
Both schedules are pure functions of the step, so a resumed run needs only the step to continue.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..recipe import WEIGHT_DECAY, WEIGHT_DECAY_END

NO_DECAY_KEYS = ("mask_token", "gamma", "layer_scale", "ls1", "ls2", "cls_token", "pos_embed")


def no_decay(name: str, param: torch.Tensor) -> bool:
    """SparK's rule: 1-D tensors, biases, mask tokens and layer scales are not decayed."""
    return param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in NO_DECAY_KEYS)


def param_groups(model: nn.Module) -> List[Dict]:
    """Two groups, 'decay' and 'no_decay'; the schedule scales each group's weight decay by ``wd_scale``."""
    groups = {"decay": {"params": [], "names": [], "wd_scale": 1.0},
              "no_decay": {"params": [], "names": [], "wd_scale": 0.0}}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = groups["no_decay" if no_decay(name, param) else "decay"]
        group["params"].append(param)
        group["names"].append(name)
    return [dict(g, group=key) for key, g in groups.items() if g["params"]]


def lamb_betas(arch: str) -> Tuple[float, float]:
    return (0.9, 0.999) if "convnext" in arch.lower() else (0.9, 0.95)


def build_optimizer(model: nn.Module, name: str, lr: float, betas: Tuple[float, float]) -> torch.optim.Optimizer:
    """LAMB (SparK's) or AdamW; weight decay is set per step by :class:`Schedule`."""
    groups = param_groups(model)
    if name == "lamb":
        from .lamb import Lamb
        # clipping happens in the trainer (clip_grad_norm_ to --clip), so LAMB's own is off
        return Lamb(groups, lr=lr, betas=betas, weight_decay=0.0, max_grad_norm=None)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {name!r}: use 'lamb' (SparK's) or 'adamw'")


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> Tuple[int, str]:
    """(warm-up steps, a note when ``warmup_epochs`` does not fit the run): a warm-up that would span
    the whole run is cut to about 10 % of it, at least one step (none for a one-step run)."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if warmup < total_steps:
        return warmup, ""
    warmup = max(total_steps // 10, 1) if total_steps > 1 else 0
    instead = f"warming up over {warmup} step(s) instead (10 % of the run, at least one)" if warmup else "no warm-up"
    return warmup, f"--warmup-epochs {warmup_epochs} spans the whole run of {total_steps} steps; {instead}"


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    warmup_steps: int
    total_steps: int
    wd: float = WEIGHT_DECAY
    wd_end: float = WEIGHT_DECAY_END

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (0.005 + 0.995 * step / self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - 1 - self.warmup_steps)
        return self.peak_lr * (0.001 + 0.999 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    def weight_decay(self, step: int) -> float:
        progress = step / max(1, self.total_steps - 1)
        return self.wd_end + (self.wd - self.wd_end) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> Tuple[float, float]:
        """Set every group's lr and weight decay for ``step``; return (lr, wd)."""
        lr, wd = self.lr(step), self.weight_decay(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            group["weight_decay"] = wd * group.get("wd_scale", 1.0)
        return lr, wd
