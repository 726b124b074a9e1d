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


def validate(doc: dict) -> None:
    """Raise ValueError when ``doc`` lacks what every consumer of the results relies on."""
    for key in ("schema", "environment", "config", "results", "skipped", "profiles"):
        if key not in doc:
            raise ValueError(f"results document has no '{key}'")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"unknown schema {doc['schema']!r}, expected {SCHEMA!r}")
    for rec in doc["results"]:
        for key in ("model", "device", "dtype", "batch", "mask_ratio", "ideal_ratio", "macs", "time_ms", "speedup",
                    "contenders"):
            if key not in rec:
                raise ValueError(f"result record has no '{key}': {sorted(rec)}")
        for mode, per in rec["time_ms"].items():
            for name, t in per.items():
                if not (t["median"] > 0 and all(r > 0 for r in t["repeats"])):
                    raise ValueError(f"{rec['model']} {mode} {name}: non-positive time {t}")
