"""The file where measured routes persist: one small versioned JSON document per user.

Location: ``$SPARK_SPARSE_CACHE_DIR/routing.json``, else ``$XDG_CACHE_HOME/spark_sparse/routing.json``,
else ``~/.cache/spark_sparse/routing.json``. Decisions are grouped by environment (device name,
thread count on the CPU, torch / spconv / triton versions), so a new GPU or library version is
measured afresh. Several processes (torchrun) may tune at once: every write re-reads the file under
an exclusive lock, merges and replaces it atomically (temporary file + ``os.replace``), so a reader
never sees half a file and no decision is lost. A file that cannot be parsed is ignored (with one
warning) and rewritten by the next decision.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Dict, Optional

from ..files import write_text

FORMAT = "spark_sparse routing cache"
VERSION = 2  # 2: 1×1 convs choose between matmul and pointwise-conv; max-pools are routed
FILE_NAME = "routing.json"

_warned = set()


def cache_dir() -> str:
    explicit = os.environ.get("SPARK_SPARSE_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spark_sparse")


def cache_path() -> str:
    return os.path.join(cache_dir(), FILE_NAME)


def warn_once(path: str, why: str, topic: str = "read") -> None:
    """One warning per cache file and topic ('read', 'write') in a process."""
    if (path, topic) not in _warned:
        _warned.add((path, topic))
        warnings.warn(f"routing cache {path}: {why}", RuntimeWarning, stacklevel=3)


def read(path: Optional[str] = None) -> Dict[str, Dict[str, dict]]:
    """{environment: {layer key: decision}}; empty when the file is missing, unreadable or foreign."""
    path = path or cache_path()
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as e:
        warn_once(path, f"ignoring it ({type(e).__name__}: {e}); its routes are measured again and the file "
                        f"rewritten")
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("environments"), dict):
        warn_once(path, "ignoring it (not a routing cache of this package); its routes are measured again and "
                        "the file rewritten")
        return {}
    if doc.get("version") != VERSION:
        return {}  # another version's decisions: measured again, replaced on the next write
    return {env: entries for env, entries in doc["environments"].items() if isinstance(entries, dict)}


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on ``path + '.lock'`` (advisory, POSIX; elsewhere writes still stay atomic)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def store(environment: str, decisions: Dict[str, dict], path: Optional[str] = None) -> None:
    """Merge ``decisions`` (layer key → decision) into ``environment``'s, under the lock."""
    path = path or cache_path()
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with _locked(path):
        environments = read(path)
        environments.setdefault(environment, {}).update(decisions)
        doc = {"format": FORMAT, "version": VERSION, "environments": environments}
        write_text(path, json.dumps(doc, indent=1, sort_keys=True))  # one atomic writer for the package
