"""SparK's optimizer, LAMB, with its Adam part in one fused pass.

LAMB's update of a weight p is Adam's direction plus weight decay, u = m̂ / (√v̂ + ε) + wd·p, scaled
per tensor by the trust ratio ‖p‖ / ‖u‖ (where both norms are non-zero; tensors without weight
decay take u as it is). timm's ``Lamb`` computes this in about a dozen elementwise passes over every
parameter, which on a CPU is memory-bound: a sixth of the no-argument demo's step. Here torch's
fused Adam kernel (the one behind ``torch.optim.Adam(fused=True)``) updates m and v and writes the
direction in one pass, starting from wd·p instead of a parameter: with a learning rate of −1 it
adds m̂ / (√v̂ + ε) to it. What remains is the norms and the update scaled by its trust ratio,
applied to the weight in one pass per tensor. The same numbers as timm's up to rounding (fp64:
1e-16; fp32: a few ulp); the no-argument demo's update took 58 ms instead of 94–105 on this
project's 2-core CPU.

The class is timm's, so its state (``exp_avg``, ``exp_avg_sq``, the group's ``step``) and its
checkpoints are the same either way; settings this pass does not implement (LAMB's own gradient
clipping, trust-ratio clipping, decoupled decay, caution, no bias correction or no gradient
averaging), and tensors the fused kernel does not take (other dtypes or devices, a gradient laid out
unlike its weight, GPUs, where timm's multi-tensor path is already few kernels and this one was not
measured), run timm's own code.
"""
from __future__ import annotations

from typing import List

import torch
from timm.optim import Lamb as TimmLamb

FUSED_DEVICES = ("cpu",)  # measured here; on GPUs timm's multi-tensor path stays (not measured there)
FUSED_DTYPES = (torch.float32, torch.float64)
# torch's fused Adam runs on the CPU from 2.4 on
_CPU_FUSED = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)


class Lamb(TimmLamb):
    """timm's LAMB (SparK's optimizer) whose update runs through torch's fused Adam kernel where it can."""

    @torch.no_grad()
    def step(self, closure=None):
        if not all(self._fusable(group) for group in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if "step" not in group:
                group["step"] = torch.tensor(0.0)  # on the CPU, as timm keeps it
            group["step"].add_(1)
            if params:
                self._update(group, params)
        return loss

    def _fusable(self, group: dict) -> bool:
        plain = (group["bias_correction"] and group["grad_averaging"] and not group["trust_clip"]
                 and not group["always_adapt"] and not group["caution"] and not group["decoupled_decay"]
                 and self.defaults["max_grad_norm"] is None)
        return plain and all(self._fusable_tensor(p) for p in group["params"] if p.grad is not None)

    def _fusable_tensor(self, p: torch.Tensor) -> bool:
        """The kernel walks its tensors' memory in step: a gradient or state laid out unlike its weight
        (possible when set by hand; autograd lays gradients out as their weights) goes to timm's code."""
        state = self.state.get(p, {})
        same_layout = all(t.stride() == p.stride() for t in (p.grad, *state.values()) if t.dim() == p.dim())
        return (p.device.type in FUSED_DEVICES and _CPU_FUSED
                and p.dtype in FUSED_DTYPES and p.grad.dtype == p.dtype and not p.grad.is_sparse
                and _dense(p) and same_layout)

    def _update(self, group: dict, params: List[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        wd, lr = group["weight_decay"], group["lr"]
        for p in params:
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        # every tensor as a flat view in memory order (channels-last weights too), which the kernels
        # take without copies; the update is elementwise, so the order does not matter
        flat = [_flat(p) for p in params]
        exp_avgs = [_flat(self.state[p]["exp_avg"]) for p in params]
        exp_avg_sqs = [_flat(self.state[p]["exp_avg_sq"]) for p in params]
        grads = [_flat(p.grad) for p in params]
        steps = [group["step"]] * len(params)
        # u starts as wd·p; Adam's step with lr −1 adds m̂ / (√v̂ + ε) to it and updates m and v
        updates = torch._foreach_mul(flat, wd) if wd != 0 else [torch.zeros_like(p) for p in flat]
        torch._fused_adam_(updates, grads, exp_avgs, exp_avg_sqs, [], steps, lr=-1.0, beta1=beta1, beta2=beta2,
                           weight_decay=0.0, eps=group["eps"], amsgrad=False, maximize=False)
        if wd == 0:
            torch._foreach_add_(flat, updates, alpha=-lr)
            return
        # the trust ratio, per tensor, as timm computes it; each tensor's step −lr·ratio is one scalar,
        # so scaling and applying the update is one pass (read p and u, write p), not two
        weight_norms = torch._foreach_norm(flat)
        update_norms = torch._foreach_norm(updates)
        ratios = torch.stack([torch.where(w > 0, torch.where(u > 0, w / u, 1.0), 1.0)
                              for w, u in zip(weight_norms, update_norms)]).tolist()
        for p, u, ratio in zip(flat, updates, ratios):
            p.add_(u, alpha=-lr * ratio)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor in its memory order."""
    if not t.is_contiguous():  # channels-last (see _dense)
        t = t.permute(0, 2, 3, 1)
    return t.view(-1)


def _dense(t: torch.Tensor) -> bool:
    """Its elements fill its memory without gaps or overlaps, in one of the layouts weights have."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
