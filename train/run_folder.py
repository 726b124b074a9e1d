"""Which run owns an --out folder, and what a starting run may resume, prune and overwrite there.

A run is identified by a random id, recorded in ``<out>/run.json`` and in each checkpoint it writes;
resuming from a checkpoint continues that checkpoint's run (same id). The rules, decided by rank 0
before anything is written:

- ``--resume auto``: the newest valid checkpoint of the folder's run (files of other runs are
  skipped with a warning); a folder from before run ids: the newest valid checkpoint; none: fresh.
  Checkpoints of the run that are all unreadable are refused (starting again at step 0 would
  pass for a resume); a run that logged steps but left no checkpoint starts again as a new run,
  its logs moved to ``previous-runs/``, and says so.
- ``--resume none``: refused when the folder holds checkpoints.
- ``--resume FILE``: refused when the folder holds another run's checkpoints (or run.json), and when
  it holds newer checkpoints of FILE's own run (the run would prune them or later resume them).
- ``--force`` lets the new run share the folder instead: the other run's checkpoints stay (never
  pruned, never resumed by ``auto``) and its ``metrics.jsonl``, ``tensorboard/`` and ``vis/`` move
  to ``previous-runs/<its id>/``, so nothing it wrote is overwritten.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

from ..io import checkpoint as ckpt
from ..files import write_text

RUN_FILE = "run.json"
LOGS = ("metrics.jsonl", "tensorboard", "vis")  # what a run writes besides checkpoints
PREVIOUS = "previous-runs"


@dataclass
class ResumePlan:
    path: Optional[str]               # checkpoint to resume from (None: a fresh start)
    run_id: str                       # the run this process continues or starts
    previous_run: Optional[str] = None  # the folder's other run whose logs move aside
    notes: List[str] = field(default_factory=list)  # what the user should know: skipped checkpoints, a restart
    payload: Optional[dict] = field(default=None, repr=False)  # the checkpoint at ``path``, as read while planning


class RunFolderError(ValueError):
    """The --out folder holds something this run must not mix with."""


def new_run_id() -> str:
    return uuid.uuid4().hex


def folder_run(out: str) -> Optional[str]:
    """The id in ``<out>/run.json`` (None when absent or unreadable)."""
    try:
        with open(os.path.join(out, RUN_FILE), encoding="utf-8") as f:
            run = json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, str) else None


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.samefile(os.path.dirname(os.path.abspath(path)), folder)
    except OSError:
        return False


def plan_resume(out: str, choice: str, force: bool = False) -> ResumePlan:
    """What to resume and under which run id (see the module docstring); raises RunFolderError."""
    owner = folder_run(out)
    existing = ckpt.list_checkpoints(out)
    holds_run = owner is not None or bool(existing)
    share = ("pass --force to start this run beside them (they are kept and never pruned; the folder's "
             f"metrics.jsonl, tensorboard/ and vis/ move to {PREVIOUS}/)")
    if choice == "auto":
        skipped: List = []
        found = ckpt.latest_valid(out, run_id=owner, skipped=skipped)
        notes = [f"skipping checkpoint {why}" for _, why, _ in skipped]
        if found:
            path, payload = found
            return ResumePlan(path, payload.get("run_id") or owner or new_run_id(), notes=notes, payload=payload)
        unreadable = [why for _, why, bad in skipped if bad]
        if unreadable and not force:
            raise RunFolderError(f"none of the {len(unreadable)} checkpoint(s) in {ckpt.checkpoint_dir(out)} can be "
                                 f"read (newest: {unreadable[0]}), so this run cannot continue; starting again "
                                 f"would begin at step 0. Resume a copy you trust with --resume FILE, or {share}")
        if owner and (unreadable or _logged_steps(out)):
            fresh = new_run_id()
            notes.append(f"no readable checkpoint of run {owner} in {ckpt.checkpoint_dir(out)}: starting run {fresh} "
                         f"from step 0; the earlier run's metrics.jsonl, tensorboard/ and vis/ move to "
                         f"{os.path.join(out, PREVIOUS, owner)}")
            return ResumePlan(None, fresh, previous_run=owner, notes=notes)
        return ResumePlan(None, owner or new_run_id(), previous_run=None if owner else _unknown_logs(out),
                          notes=notes)
    if choice == "none":
        if existing and not force:
            raise RunFolderError(f"{ckpt.checkpoint_dir(out)} already holds checkpoints: continue them with --resume "
                                 f"auto, choose another --out, or {share}")
        return ResumePlan(None, new_run_id(), previous_run=owner or _unknown_logs(out))

    payload = ckpt.load(choice)
    file_run = payload.get("run_id")
    same = (file_run is not None and file_run == owner) or (owner is None and _inside(choice, ckpt.checkpoint_dir(out)))
    if holds_run and not same:
        if not force:
            raise RunFolderError(f"{out} holds checkpoints of another run ({owner or 'unknown'}); resuming {choice} "
                                 f"(run {file_run or 'none: imported weights'}) there would mix the two runs: choose "
                                 f"another --out, or {share}")
        return ResumePlan(choice, file_run if file_run and file_run != owner else new_run_id(),
                          previous_run=owner or _unknown_logs(out), payload=payload)
    newer = [step for step, path in existing if step > payload["step"] and ckpt.run_of(path) == (file_run or owner)]
    if same and newer:
        if not force:
            raise RunFolderError(f"{out} holds checkpoints of this run up to step {max(newer)}, newer than {choice} "
                                 f"(step {payload['step']}): --resume auto continues from the newest; to go back to "
                                 f"step {payload['step']}, resume into another --out, or {share}")
        return ResumePlan(choice, new_run_id(), previous_run=owner or _unknown_logs(out),  # a branch: a new run
                          payload=payload)
    return ResumePlan(choice, file_run or owner or new_run_id(), previous_run=None if owner else _unknown_logs(out),
                      payload=payload)


LOCK_FILE = "run.lock"


class FolderLock:
    """``<out>/run.lock``, held (an open file with an exclusive flock) until :meth:`release`."""

    def __init__(self, handle, created: List[str]):
        self.handle = handle
        self.created = created  # what taking the lock made (the lock file, the folder), innermost first

    def release(self, undo: bool = False) -> None:
        """Let the lock go; with ``undo`` (a run refused before it wrote anything) also remove the lock
        file and the folder if taking the lock created them, so a refusal leaves no trace."""
        if undo:  # while still holding the lock, so no other run can be holding this file meanwhile
            for path in self.created:
                try:
                    os.rmdir(path) if os.path.isdir(path) else os.unlink(path)
                except OSError:
                    pass  # another process has since put something there: it stays
        self.handle.close()


def lock_folder(out: str) -> FolderLock:
    """Hold ``<out>/run.lock`` for this process's lifetime (an open file; closing it releases the lock,
    and so does the process's end, however it ends: no stale lock after a crash). A second run
    started on the same --out while one is writing there would resume the same checkpoints and write
    over each other's, or delete the temporary file of a checkpoint being written; it is refused,
    naming the process that holds the folder, before it touches anything."""
    import fcntl
    lock_path = os.path.join(out, LOCK_FILE)
    created = []  # the folders this makes, innermost first
    missing = os.path.abspath(out)
    while not os.path.exists(missing):
        created.append(missing)
        missing = os.path.dirname(missing)
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(lock_path):
        created.insert(0, lock_path)
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderError(f"another spark-sparse pretrain (process {holder}) is writing to {out}: wait for it to "
                             f"end, or choose another --out") from None
    try:
        same_file = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
    except FileNotFoundError:
        same_file = False
    if not same_file:  # a refused run removed the file we opened before we locked it: its folder is contested
        handle.close()
        raise RunFolderError(f"another spark-sparse pretrain started on {out} at the same moment: try again")
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return FolderLock(handle, created)


def _logged_steps(out: str) -> bool:
    """Whether the folder's metrics.jsonl holds any step (then a fresh start would overwrite progress)."""
    try:
        return os.path.getsize(os.path.join(out, LOGS[0])) > 0
    except OSError:
        return False


def _unknown_logs(out: str) -> Optional[str]:
    """A name for logs of a run that recorded no id (written before run ids existed), if there are any."""
    if any(os.path.exists(os.path.join(out, name)) for name in LOGS):
        return time.strftime("unknown-%Y%m%d-%H%M%S")
    return None


def claim(out: str, plan: ResumePlan) -> None:
    """Make ``plan.run_id`` the folder's run: move the previous run's logs aside, write run.json."""
    os.makedirs(out, exist_ok=True)
    if plan.previous_run and plan.previous_run != plan.run_id:
        target = os.path.join(out, PREVIOUS, plan.previous_run)
        for name in LOGS:
            source = os.path.join(out, name)
            if os.path.exists(source):
                os.makedirs(target, exist_ok=True)
                destination = os.path.join(target, name)
                if os.path.exists(destination):  # moved once before: keep both
                    destination += time.strftime(".%Y%m%d-%H%M%S")
                os.replace(source, destination)
    if folder_run(out) != plan.run_id:
        write_text(os.path.join(out, RUN_FILE), json.dumps({"run_id": plan.run_id, "claimed": time.time()}),
                   durable=True)
