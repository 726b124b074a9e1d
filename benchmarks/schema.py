"""The results document's schema: its version, its validation, and its JSON text (no NaN, ever)."""
from __future__ import annotations

import json
import math

SCHEMA = "spark_sparse.bench/1"


def _clean(value):
    """JSON has no NaN or infinity: such values become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(doc: dict) -> str:
    return json.dumps(_clean(doc), indent=1, allow_nan=False)


# what the tables and the README read from a document's environment and config
ENVIRONMENT = {"date_utc": (), "python": (), "versions": ("torch", "timm", "spconv"),
               "cpu": ("model", "usable_cores", "torch_threads", "torch_interop_threads")}
CONFIG = ("modes", "warmup", "repeats", "backends", "dense_format")


def validate(doc: dict) -> None:
    """Raise ValueError when ``doc`` lacks what every consumer of the results relies on (a damaged
    document is refused here, before anything is written from it)."""
    try:
        _validate(doc)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed results document ({type(e).__name__}: {e})") from None


def _validate(doc: dict) -> None:
    for key in ("schema", "environment", "config", "results", "skipped", "profiles"):
        if key not in doc:
            raise ValueError(f"results document has no '{key}'")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"unknown schema {doc['schema']!r}, expected {SCHEMA!r}")
    env = doc["environment"]
    for key, inner in ENVIRONMENT.items():
        missing = key if key not in env else next((f"{key}.{k}" for k in inner if k not in env[key]), None)
        if missing:
            raise ValueError(f"results document's environment has no '{missing}'")
    for key in CONFIG:
        if key not in doc["config"]:
            raise ValueError(f"results document's config has no '{key}'")
    for rec in doc["results"]:
        for key in ("model", "device", "dtype", "batch", "mask_ratio", "ideal_ratio", "macs", "time_ms", "speedup",
                    "contenders"):
            if key not in rec:
                raise ValueError(f"result record has no '{key}': {sorted(rec)}")
        for mode, per in rec["time_ms"].items():
            for name, t in per.items():
                if "median" not in t or "repeats" not in t:
                    raise ValueError(f"{rec['model']} {mode} {name}: time has no 'median' or 'repeats': {t}")
                if not (t["median"] > 0 and all(r > 0 for r in t["repeats"])):
                    raise ValueError(f"{rec['model']} {mode} {name}: non-positive time {t}")
    for s in doc["skipped"]:
        for key in ("model", "device", "dtype", "reason"):
            if key not in s:
                raise ValueError(f"skipped entry has no '{key}': {s}")
