"""Backbone names: a name timm does not know is refused up front, with the closest names it does.

Every command that takes a timm model name (``pretrain --arch``, ``demo --arch``, ``import --arch``,
``bench --models`` / ``--profile-model``) checks it here before building anything, so a typo ends in
one line that names the option and suggests what was meant, not in timm's traceback. A name timm
knows but spark_sparse cannot run sparse (a ViT, say) gets its own error from the converter.
"""
from __future__ import annotations

import difflib

SUPPORTED = ("timm ResNets (resnet18 … resnet200, resnet*d, …) and ConvNeXts (convnext_atto … convnext_large, "
             "convnextv2_*)")


class UnknownArchError(ValueError):
    """A model name timm has no entry for (an optional pretrained tag after a dot is allowed)."""


def check_arch(name: str, option: str = "--arch") -> str:
    """``name`` when timm knows it (``resnet50``, ``resnet50.a1_in1k``); else UnknownArchError naming
    ``option``, the closest known names and the families spark_sparse runs."""
    import timm  # here, not at import time: the command line builds its parsers without timm

    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise UnknownArchError(f"{option} {name!r}: timm has no such model{hint}. spark_sparse runs {SUPPORTED}")
