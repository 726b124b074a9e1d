"""Shared pieces of the pre-training tests: tiny image folders, argument parsing, subprocess runs."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smallest run that still exercises everything: a ResNet-10-T (timm's smallest ResNet: the
# ResNet-18 layout with one block per stage, a deep stem and average-pool shortcuts) at 64 px, a
# narrow decoder; fp32 (--amp auto would pick bf16 on CPUs with native bf16).
TINY = ["--arch", "resnet10t", "--input-size", "64", "--batch-size", "4", "--decoder-width", "32", "--workers", "0",
        "--amp", "off",
        "--log-every", "1", "--vis-every", "0", "--warmup-epochs", "0.5", "--base-lr", "0.05", "--no-progress"]


def make_image_folder(root: str, count: int = 16, size=(72, 88), classes: int = 2, seed: int = 0) -> str:
    """An ImageFolder-style tree of small smooth random RGB images (PNG and JPEG)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = os.path.join(root, f"class{i % classes}")
        os.makedirs(folder, exist_ok=True)
        low = rng.integers(0, 256, size=(size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size[1], size[0]), Image.BILINEAR)
        img.save(os.path.join(folder, f"img{i:03d}.{'png' if i % 2 else 'jpg'}"))
    return root


def parse(argv: List[str]):
    from spark_sparse.cli import build_parser
    return build_parser().parse_args(["pretrain", *argv])


def env(threads: int = 1) -> Dict[str, str]:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = str(threads)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(argv: List[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spark_sparse.cli", "pretrain", *argv], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"run failed ({proc.returncode}):\n{out}"
    return out


def final_checkpoint(out_dir: str, step: Optional[int] = None) -> dict:
    from spark_sparse.io import checkpoint as ckpt
    found = ckpt.list_checkpoints(out_dir)
    assert found, f"no checkpoint in {out_dir}"
    path = dict(found)[step] if step is not None else found[-1][1]
    return ckpt.load(path)


def max_weight_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
