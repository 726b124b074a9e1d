"""Shared pieces of the export / import / reconstruct tests.

Small models at 64 px: resnet18 and convnext_atto with non-trivial norms (tests/equivalence.py),
a SparK model with a narrow decoder whose BatchNorm running statistics have been moved by a few
train-mode passes of the sparse encoder, and SparK's published file layouts written from their
description in spark_sparse/spark_format.py (written here independently, from timm's names).
"""
from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from typing import Dict, List, Tuple

import torch

import spark_sparse as ss
from spark_sparse.io.checkpoint import weights_checkpoint
from spark_sparse.spark import SparK
from spark_sparse.io import checkpoint as ckpt
from tests.equivalence import build_model

SIZE = 64
DECODER_WIDTH = 32


def cli(*argv: str) -> Tuple[int, str, str]:
    """Run ``spark-sparse`` in this process: (exit status, stdout, stderr)."""
    from spark_sparse.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def images_and_mask(batch: int = 2, size: int = SIZE, ratio: float = 0.6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    visible = ss.random_visible(batch, (size // 32, size // 32), ratio, generator=g)
    return images, visible


def trained_spark(arch: str, seed: int = 0, steps: int = 2) -> SparK:
    """A SparK model around a sparsified, randomised timm backbone, after ``steps`` train-mode forward
    passes (BatchNorm running statistics computed by the sparse encoder over active sites)."""
    dense = build_model(arch, seed=seed)
    torch.manual_seed(seed)
    model = SparK(ss.sparsify(dense), decoder_width=DECODER_WIDTH).train()
    with torch.no_grad():
        for step in range(steps):
            images, visible = images_and_mask(4, seed=seed + 100 + step)
            model(images, visible)
    return model.eval()


def write_checkpoint(model: SparK, arch: str, path: str) -> str:
    ckpt.save_atomic(weights_checkpoint(model, arch, input_size=SIZE), path)
    return path


def encoder_state(model: SparK) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


# ---- SparK's file layouts ----------------------------------------------------------------------------
def timm_to_official_convnext(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """facebookresearch/ConvNeXt's names for a timm ConvNeXt state dict."""
    out = {}
    for key, value in state.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", key)
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
        if ".mlp.grn." in k:
            k = k.replace(".mlp.grn.weight", ".grn.gamma").replace(".mlp.grn.bias", ".grn.beta")
            value = value.reshape(1, 1, 1, -1)
        k = re.sub(r"^head\.norm\.", "norm.", k)
        k = re.sub(r"^head\.fc\.", "head.", k)
        out[k] = value
    return out


def spark_encoder_names(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder as SparK's ``sparse_encoder.sp_cnn`` names it: timm's for ResNets, official for ConvNeXts."""
    return timm_to_official_convnext(state) if arch.startswith("convnext") else dict(state)


def spark_timm_style(model: SparK, arch: str) -> Dict[str, torch.Tensor]:
    """``<arch>_1kpretrained_timm_style.pth``: the bare encoder state dict."""
    return spark_encoder_names(arch, encoder_state(model))


def spark_withdecoder(model: SparK, arch: str, input_size: int = SIZE, epoch: int = 41) -> dict:
    """``<arch>_withdecoder_1kpretrained_spark_style.pth``: SparK.state_dict(with_config=True) in 'module'."""
    module = {f"sparse_encoder.sp_cnn.{k}": v for k, v in spark_timm_style(model, arch).items()}
    for k, v in model.state_dict().items():
        if k.startswith("decoder."):
            module["dense_decoder." + k[len("decoder."):]] = v.clone()
        elif k.startswith(("densify_norms.", "densify_projs.", "mask_tokens.")):
            module[k] = v.clone()
    module["imn_m"], module["imn_s"] = torch.empty(1, 3, 1, 1), torch.empty(1, 3, 1, 1)
    module["norm_black"] = torch.zeros(1, 3, input_size, input_size)
    module["config"] = {"mask_ratio": model.mask_ratio, "densify_norm_str": model.densify_norm, "sbn": False,
                        "hierarchy": 4, "sparse_encoder.input_size": input_size,
                        "dense_decoder.width": DECODER_WIDTH}
    return {"args": "Namespace(...)", "input_size": input_size, "arch": arch, "epoch": epoch,
            "performance_desc": "0.5 0.5", "module": module, "optimizer": {"state": {}, "param_groups": []},
            "is_pretrain": True}


def stage_outputs(model: SparK, images, visible) -> List[torch.Tensor]:
    with torch.no_grad():
        return model.encoder.eval()(images, visible)
