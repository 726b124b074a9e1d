"""Routes inside activation checkpointing: the recomputation runs what the forward ran.

A checkpointed block runs its forward twice: once in the forward pass, keeping only its input, and
again in the backward pass to rebuild the tensors autograd saved. Each routed layer must then run the
same implementation both times (the backward unpacks what the first forward's implementation
saved), and neither call may tune: a CPU sample's backward would time the recomputation of the whole
block too, and a CUDA trial's backward would run inside the checkpointed forward. So inside a
checkpointed forward layers take decided routes (the cache's, else the fixed rules') and record
them in a :class:`RouteLog`; its recomputation replays them in call order. The log is per thread (the
forward and its recomputation each run on one thread; threads of ``DataParallel`` do not share one), and
a replay names the layer that asks, so a recomputation that calls its layers in another order is an
error, not a layer running another layer's route.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List, Optional, Tuple

from .router import Route


class _Frames(threading.local):
    def __init__(self):
        self.stack: List[Tuple[str, "RouteLog"]] = []  # ('record' | 'replay', log), innermost last


_frames = _Frames()


class RouteLog:
    """The routes one checkpointed call's layers ran, in call order."""

    def __init__(self):
        self.routes: List[Tuple[object, Route]] = []  # (layer, its route)
        self._next = 0

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """For the checkpointed forward: routed layers record what they run (and do not tune)."""
        with _frame("record", self):
            yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """For the recomputation: routed layers run the recorded routes again, in order."""
        self._next = 0
        with _frame("replay", self):
            yield

    def contexts(self):
        """(forward context, recompute context), as torch's checkpoint ``context_fn`` returns them."""
        return self.recording(), self.replaying()


@contextlib.contextmanager
def _frame(mode: str, log: RouteLog) -> Iterator[None]:
    _frames.stack.append((mode, log))
    try:
        yield
    finally:
        _frames.stack.pop()


def checkpointed() -> bool:
    """Whether layers run inside a checkpointed forward or its recomputation now (they must not tune)."""
    return bool(_frames.stack)


def replayed_route(layer) -> Optional[Route]:
    """The route ``layer`` ran at this point of the checkpointed forward, while its recomputation
    replays (None otherwise)."""
    if not _frames.stack or _frames.stack[-1][0] != "replay":
        return None
    log = _frames.stack[-1][1]
    if log._next >= len(log.routes):
        raise RuntimeError("a checkpointed block's recomputation ran more routed layers than its forward")
    recorded, route = log.routes[log._next]
    if recorded is not layer:
        raise RuntimeError(f"a checkpointed block's recomputation called its routed layers in another order "
                           f"than its forward: call {log._next + 1} was {_name(recorded)} in the forward and is "
                           f"{_name(layer)} now")
    log._next += 1
    return route


def record(layer, route: Route) -> None:
    """Note the route ``layer`` runs while a checkpointed forward records."""
    if _frames.stack and _frames.stack[-1][0] == "record":
        _frames.stack[-1][1].routes.append((layer, route))


def _name(layer) -> str:
    return f"{type(layer).__name__} at {id(layer):#x}"
