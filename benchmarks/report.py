"""The files of a run: results.json (also while the run is in progress), results.md and the plots."""
from __future__ import annotations

import os
from typing import List

from spark_sparse.files import write_text as atomic_write

from .markdown import markdown
from .plots import plot_profile, plot_speedups, plot_step_phases
from .schema import to_json, validate


def write_partial(doc: dict, out_dir: str) -> str:
    """Write results.json of a run still in progress (marked ``"partial": true``)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    atomic_write(path, to_json(dict(doc, partial=True)))
    return path


def write_outputs(doc: dict, out_dir: str, plots: bool = True) -> List[str]:
    """Write results.json, results.md and the plots into ``out_dir``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    validate(doc)
    doc.setdefault("partial", False)
    written = []
    images: List[str] = []
    if plots:
        if doc["results"]:
            images.append(plot_speedups(doc, os.path.join(out_dir, "speedup.png")))
        if any(rec.get("step_phases_ms") for rec in doc["results"]):
            images.append(plot_step_phases(doc, os.path.join(out_dir, "step_phases.png")))
        for profile in doc["profiles"]:
            if "layers" in profile:
                images.append(plot_profile(profile, os.path.join(out_dir, f"profile_{profile['model']}.png")))
    path = os.path.join(out_dir, "results.json")
    atomic_write(path, to_json(doc))
    written.append(path)
    path = os.path.join(out_dir, "results.md")
    atomic_write(path, markdown(doc, images))
    written.append(path)
    return written + images
