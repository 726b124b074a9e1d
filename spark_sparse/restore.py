"""SparK models from pre-training checkpoints (read by :mod:`spark_sparse.io.checkpoint`).

Weights are checked against the architecture with :mod:`spark_sparse.weights` before they are
loaded, so a wrong file gets the same clear error from every command.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .spark import SparK, build_spark
from .weights import WeightsError, check_encoder_state, compare

ENCODER_PREFIX = "encoder."


def encoder_state(payload: Dict[str, Any], source: str) -> Dict[str, torch.Tensor]:
    """The checkpoint's encoder weights under timm's names, checked against its architecture."""
    state = {k[len(ENCODER_PREFIX):]: v for k, v in payload["model"].items() if k.startswith(ENCODER_PREFIX)}
    check_encoder_state(state, payload["arch"], source)
    return state


def build_model(payload: Dict[str, Any], source: str, *, encoder_kind: Optional[str] = "sparse",
                backend: Optional[str] = None) -> SparK:
    """The SparK model a checkpoint describes, with its weights, in eval mode.

    ``encoder_kind``: 'sparse' (default), 'masked_dense', or None for the checkpoint's own; both
    encoders have the same weights, so either can be built from any checkpoint.
    """
    config = dict(payload["model_config"])
    config["encoder_kind"] = encoder_kind or payload["encoder_kind"]
    if backend:
        config["backend"] = backend
    encoder_state(payload, source)  # a clear error before load_state_dict's long one
    model = build_spark(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(ENCODER_PREFIX)}
    head = {k: v for k, v in payload["model"].items() if not k.startswith(ENCODER_PREFIX)}
    diff = compare(head, expected)
    if diff:
        raise WeightsError(f"{source}: the decoder / densify weights do not fit its model_config "
                           f"(decoder width {config.get('decoder_width')}, densify norm "
                           f"{config.get('densify_norm')}): {diff.describe('the model')}")
    model.load_state_dict(payload["model"])
    return model.eval()
