"""Routes inside activation checkpointing: the recomputation runs what the forward ran.

A checkpointed block runs its forward twice: once in the forward pass, keeping only its input, and
again in the backward pass to rebuild the tensors autograd saved. Each routed layer must then run the
same implementation both times (the backward unpacks what the first forward's implementation
saved), and neither call may tune: a CPU sample's backward would time the recomputation of the whole
block too, and a CUDA trial's backward would run inside the checkpointed forward. So inside a
checkpointed forward layers take decided routes (the cache's, else the fixed rules') and record
them in a :class:`RouteLog`; its recomputation replays them in call order.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple

from .router import Route

_frames: List[Tuple[str, "RouteLog"]] = []  # ('record' | 'replay', log), innermost last


class RouteLog:
    """The routes one checkpointed call's layers ran, in call order."""

    def __init__(self):
        self.routes: List[Route] = []
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
    _frames.append((mode, log))
    try:
        yield
    finally:
        _frames.pop()


def checkpointed() -> bool:
    """Whether layers run inside a checkpointed forward or its recomputation now (they must not tune)."""
    return bool(_frames)


def replayed_route() -> Optional[Route]:
    """The next recorded route while a recomputation replays (None otherwise)."""
    if not _frames or _frames[-1][0] != "replay":
        return None
    log = _frames[-1][1]
    if log._next >= len(log.routes):
        raise RuntimeError("a checkpointed block's recomputation ran more routed layers than its forward")
    log._next += 1
    return log.routes[log._next - 1]


def record(route: Route) -> None:
    """Note the route a layer runs while a checkpointed forward records."""
    if _frames and _frames[-1][0] == "record":
        _frames[-1][1].routes.append(route)
