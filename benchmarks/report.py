"""The files of a run: results.json (also while the run is in progress), results.md and the plots."""
from __future__ import annotations

import os
from typing import Callable, List, Tuple

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


SPEEDUP_PLOT = "speedup.png"
STEP_PLOT = "step_phases.png"


def profile_plot(model: str) -> str:
    return f"profile_{model}.png"


def plots_of(doc: dict) -> List[Tuple[str, Callable[[str], str]]]:
    """The PNG files ``write_outputs`` makes of ``doc``: (file name, its plot function)."""
    plots = [(SPEEDUP_PLOT, lambda path: plot_speedups(doc, path))] if doc["results"] else []
    if any(rec.get("step_phases_ms") for rec in doc["results"]):
        plots.append((STEP_PLOT, lambda path: plot_step_phases(doc, path)))
    return plots + [(profile_plot(p["model"]), lambda path, p=p: plot_profile(p, path))
                    for p in doc["profiles"] if "layers" in p]


def plot_names(cfg) -> List[str]:
    """Every PNG file a run of ``cfg`` may make, known before it runs (the profile's model may not be)."""
    names = [] if cfg.profile_only else [SPEEDUP_PLOT] + ([STEP_PLOT] if "step" in cfg.modes else [])
    if cfg.profile_model is not None:
        names += [profile_plot(m) for m in ([cfg.profile_model] if cfg.profile_model else cfg.models)]
    return names


def write_outputs(doc: dict, out_dir: str, plots: bool = True) -> List[str]:
    """Write results.json, results.md and the plots into ``out_dir``; returns the paths written.
    The document is checked and its tables made first: a damaged one writes nothing."""
    validate(doc)
    doc.setdefault("partial", False)
    todo = [(os.path.join(out_dir, name), plot) for name, plot in plots_of(doc)] if plots else []
    images = [path for path, _ in todo]
    text = markdown(doc, images)
    os.makedirs(out_dir, exist_ok=True)
    for path, plot in todo:
        plot(path)
    written = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")]
    atomic_write(written[0], to_json(doc))
    atomic_write(written[1], text)
    return written + images
