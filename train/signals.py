"""SIGTERM / SIGINT during training: remembered by a handler, acted on at the next step boundary (after
a checkpoint), so a scheduler's stop never leaves a half-written step behind."""
from __future__ import annotations

import signal
from typing import Optional

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as a shell reports it


class StopSignals:
    """``with StopSignals() as stop:`` installs the handlers, restores the previous ones on exit;
    ``stop.received`` names the first signal (None until one arrives)."""

    def __init__(self):
        self.received: Optional[str] = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        for s in (signal.SIGTERM, signal.SIGINT):
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
        self.received = self.received or signal.Signals(signum).name  # no printing: it may interrupt a print

    def exit_code(self) -> int:
        """143 for SIGTERM (also when another process of the run received it), 130 for SIGINT."""
        return EXIT_CODES.get(self.received or "SIGTERM", 143)
