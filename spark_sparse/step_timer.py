"""Where one SparK training step's time (and activation memory) goes, phase by phase.

A :class:`StepTimer` is passed to ``SparK.forward(..., probe=timer)``: the model reports its forward
phases (encoder, densify, decoder, loss) and the tensors between them. The backward pass is one
autograd call, so it is split with gradient hooks on those tensors: the decoder's backward ends
when the last gradient reaches the densified maps, the encoder's starts when the first gradient
reaches the encoder's stage outputs (the deepest stage feeds nothing but the head). Autograd runs
nodes created later first, so the decoder's, densify's and encoder's backward do not interleave.

The caller times what lies outside the model (data wait, backward as a whole, optimizer). On CUDA
the device is synchronised at every boundary, so timing a step costs a little; time a sample of
steps, not all of them.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Optional

import torch

PHASES = ("data", "encoder_fwd", "densify", "decoder_fwd", "loss", "decoder_bwd", "densify_bwd", "encoder_bwd",
          "optimizer")
FORWARD_PHASES = ("encoder_fwd", "densify", "decoder_fwd", "loss")


class StepTimer:
    """Milliseconds per phase of one step (``ms``) and, with ``count_memory``, the bytes each forward
    phase saves for the backward pass (``saved_bytes``; parameters excluded, each storage once).
    Tensors that custom autograd functions keep as plain attributes are not seen by the count."""

    def __init__(self, device: Optional[torch.device] = None, count_memory: bool = False,
                 exclude: Iterable[torch.Tensor] = (), enabled: bool = True):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.enabled = enabled
        self.count_memory = count_memory and enabled
        self.ms: Dict[str, float] = {}
        self.saved_bytes: Dict[str, int] = {}
        self._seen = {t.untyped_storage().data_ptr() for t in exclude}
        self._arrivals: Dict[str, list] = {}

    def now(self) -> float:
        """The clock, after the device has finished what was queued (CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        if self.enabled:
            self.ms[name] = self.ms.get(name, 0.0) + seconds * 1e3

    @contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        start = self.now()
        if self.count_memory:
            with torch.autograd.graph.saved_tensors_hooks(self._packer(name), lambda t: t):
                yield
        else:
            yield
        self.add(name, self.now() - start)

    def _packer(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in self._seen:
                self._seen.add(storage.data_ptr())
                self.saved_bytes[name] = self.saved_bytes.get(name, 0) + storage.nbytes()
            return t
        return pack

    def boundary(self, name: str, tensors) -> None:
        """Note when gradients reach ``tensors`` (the outputs of phase ``name``) in the backward pass."""
        if not self.enabled:
            return
        arrivals = self._arrivals.setdefault(name, [])
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(lambda grad: arrivals.append(self.now()))

    def backward(self, run: Callable[[], None]) -> None:
        """Run the backward pass (``run``), split into decoder, densify and encoder backward."""
        if not self.enabled:
            run()
            return
        start = self.now()
        run()
        end = self.now()
        head_done = max(self._arrivals.get("densify") or [start])
        encoder_start = min(self._arrivals.get("encoder") or [head_done])
        head_done = min(head_done, encoder_start)
        self.add("decoder_bwd", head_done - start)
        self.add("densify_bwd", encoder_start - head_done)
        self.add("encoder_bwd", end - encoder_start)


def split_of(ms: Dict[str, float]) -> Dict[str, float]:
    """The phases of ``ms`` in step order (the ones measured), for tables, plots and logs."""
    return {name: ms[name] for name in PHASES if name in ms}
