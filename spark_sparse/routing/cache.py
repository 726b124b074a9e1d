"""The file where measured routes persist: one small versioned JSON document per user.

Location: ``$SPARK_SPARSE_CACHE_DIR/routing.json``, else ``$XDG_CACHE_HOME/spark_sparse/routing.json``,
else ``~/.cache/spark_sparse/routing.json``. Decisions are grouped by environment (device name,
thread count on the CPU, torch / spconv / triton versions), so a new GPU or library version is
measured afresh. Several processes (torchrun) may tune at once: every write re-reads the file under
an exclusive lock, merges and replaces it atomically (temporary file + ``os.replace``), so a reader
never sees half a file and no decision is lost. A file that cannot be parsed, is not a regular file
(a FIFO would block the read) or was written by another version of the cache is ignored with one
warning, and so is each malformed decision in it (a hand edit without its timings): what was ignored
is measured again and rewritten by the next decision.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import warnings
from typing import Dict, Optional

from ..files import write_text

FORMAT = "spark_sparse routing cache"
VERSION = 3  # 2: 1×1 convs choose between matmul and pointwise-conv; max-pools are routed; 3: gather-conv
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
        if not stat.S_ISREG(os.stat(path).st_mode):
            warn_once(path, "ignoring it (not a regular file); routes are measured again")
            return {}
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
        warn_once(path, f"ignoring it (written by routing cache version {doc.get('version')!r}; this package "
                        f"reads version {VERSION}); its routes are measured again and the file rewritten")
        return {}
    environments, bad = {}, []
    for env, entries in doc["environments"].items():
        if not isinstance(entries, dict):
            continue
        environments[env] = {}
        for key, decision in entries.items():
            if well_formed(decision):
                environments[env][key] = decision
            else:
                bad.append(key)
    if bad:
        warn_once(path, f"ignoring {len(bad)} malformed decision(s) (e.g. {bad[0]!r}: a decision is "
                        f"{{'implementation': name, 'ms': {{name: milliseconds}}}}); they are measured again "
                        f"and rewritten")
    return environments


def well_formed(decision) -> bool:
    """Whether ``decision`` has the shape the router reads: the implementation's name, every
    candidate's forward+backward milliseconds (finite numbers), and any errors as text."""
    if not isinstance(decision, dict) or not isinstance(decision.get("implementation"), str):
        return False
    ms, errors = decision.get("ms"), decision.get("errors", {})
    return (isinstance(ms, dict) and decision["implementation"] in ms
            and all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) for k, v in ms.items())
            and isinstance(errors, dict) and all(isinstance(v, str) for v in errors.values()))


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
