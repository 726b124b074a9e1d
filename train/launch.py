"""``torchrun`` whose own exit status tells a scheduler how the run ended.

torchrun forwards SIGTERM / SIGINT to the training processes, which save a checkpoint and exit with
143 / 130, but torchrun itself then exits 1 with a traceback, as if the run had crashed; so it does
when the processes refuse a run (status 2) or stop on a non-finite loss (status 3). This is torchrun
unchanged (same options), except that a stop signal ends it with 128 + the signal's number, and
processes that all exit with one such status end it with that status, each with a one-line message::

    python -m spark_sparse.train.launch --nproc_per_node 8 -m spark_sparse.cli pretrain ...
"""
from __future__ import annotations

import signal
import sys
from typing import List, Optional


from .exits import EXIT_BAD_INPUT, EXIT_NON_FINITE

PASSED_THROUGH = (EXIT_BAD_INPUT, EXIT_NON_FINITE)  # statuses a training process exits with on purpose


def main(argv: Optional[List[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun
    try:
        torchrun(argv)
    except ChildFailedError as e:
        # processes the agent stopped after the first one ended have negative (signal) statuses
        statuses = {f.exitcode for f in e.failures.values() if f.exitcode >= 0}
        if len(statuses) != 1 or next(iter(statuses)) not in PASSED_THROUGH:
            raise
        status = statuses.pop()
        print(f"torchrun: the training processes exited with status {status} (their message is above)",
              file=sys.stderr, flush=True)
        return status
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(f"torchrun: stopped by {name}; the training processes were passed the signal (a pre-training run "
              f"saves a checkpoint first: see its log above)", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
