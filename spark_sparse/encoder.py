"""SparseEncoder: a backbone that runs on the visible patches only."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch
from torch import nn

from .backends import check_backend_name
from .features import SparseFeatures
from .flops import sparse_macs
from .geometry import Geometry
from .layers.base import RoutedModule, run_checkpointed, run_layer
from .layers.containers import SparseResidualBlock
from .layers.conv import SparseConv2d, backend_request
from .masks import check_visible
from .plan import EncoderPlan, PlannedEncoder, run_plan
from .recompute import recomputing
from .routing import check_routing, depthwise_request


class SparseEncoder(PlannedEncoder):
    """``encoder(images, visible)`` → one dense map per stage (B, C, H/s, W/s), zeros at masked sites.

    Built by :func:`spark_sparse.sparsify`. Its ``state_dict()`` has the keys, shapes and layouts of
    the dense backbone without its classifier head.
    """

    def __init__(self, children: Dict[str, nn.Module], plan: EncoderPlan, arch: str = ""):
        super().__init__(plan, children)
        self.arch = arch
        self.checkpointing = False
        self._stem_paths: Optional[List[str]] = None

    def set_backend(self, backend: str) -> "SparseEncoder":
        """Run every non-depthwise conv with ``backend`` ('auto', 'torch', 'gather-conv', 'tiles', 'spconv'); 1×1 and
        patchify convs stay matmuls, depthwise convs follow ``set_depthwise``."""
        check_backend_name(backend)
        for module in self._convs(depthwise=False):
            module.requested = backend_request(module.spec, backend)
        return self

    def set_depthwise(self, impl: str) -> "SparseEncoder":
        """Run every depthwise conv with ``impl``: 'auto', or 'table' (the plain-PyTorch twin), 'tiles',
        'dense', 'triton' (kernels/depthwise.py), also spelt 'depthwise-tiles' etc."""
        request = depthwise_request(impl)
        for module in self._convs(depthwise=True):
            module.requested = request
        return self

    def set_routing(self, routing: Optional[str]) -> "SparseEncoder":
        """How this encoder's 'auto' layers choose: 'measured' (time the candidates on first use, cached
        across runs), 'fixed' (the rule table, reproducible) or None (the process default,
        :func:`spark_sparse.routing.get_routing`)."""
        if routing is not None:
            check_routing(routing)
        for module in self.modules():
            if isinstance(module, RoutedModule):  # convs, Linears and max-pools
                module.routing = routing
        return self

    def set_checkpointing(self, enabled: bool) -> "SparseEncoder":
        """In training, keep only the input of the stem and of each residual block, and recompute them
        in the backward pass (less activation memory for one more encoder forward; the same numbers)."""
        self.checkpointing = bool(enabled)
        for module in self.modules():
            if isinstance(module, SparseResidualBlock):
                module.checkpointing = bool(enabled)
        return self

    def stem_paths(self) -> List[str]:
        """The plan's modules before the first stage (ResNet: conv1, bn1, act1, maxpool; ConvNeXt: stem);
        found once (the plan does not change), read by every checkpointed forward."""
        if self._stem_paths is None:
            stem = []
            for path in self.plan.run:
                module = self.get_submodule(path)
                if path in self.plan.features or any(isinstance(m, SparseResidualBlock) for m in module.modules()):
                    break
                stem.append(path)
            self._stem_paths = stem
        return list(self._stem_paths)

    def _convs(self, depthwise: bool) -> List[SparseConv2d]:
        return [m for m in self.modules() if isinstance(m, SparseConv2d) and m.spec.is_depthwise == depthwise]

    def geometry(self, images: torch.Tensor, visible: torch.Tensor) -> Geometry:
        visible = check_visible(visible, images, self.patch_size)
        self.check_images(images)
        return Geometry(visible, self.patch_size)

    def forward_sparse(self, images: torch.Tensor, visible: torch.Tensor) -> List[SparseFeatures]:
        """Per-stage SparseFeatures (no densify copy), for heads that work on active sites."""
        geometry = self.geometry(images, visible)
        x = SparseFeatures.from_dense(images, geometry, 1)
        plan = self.plan
        stem = self.stem_paths() if self.checkpointing and recomputing(self) else []
        if stem:  # the stem's maps at strides 2-4 are the encoder's widest: recomputed as one piece
            modules = nn.ModuleList([self.get_submodule(path) for path in stem])  # whose buffers to keep
            x = run_checkpointed(modules, self._run_stem, modules, x)
            plan = dataclasses.replace(plan, run=plan.run[len(stem):])
        outputs = run_plan(self, plan, x, lambda module, x, path: run_layer(module, x))
        for out, stride in zip(outputs, self.plan.strides):
            assert out.stride == stride, f"stage output at stride {out.stride}, expected {stride}"
        return outputs

    def forward(self, images: torch.Tensor, visible: torch.Tensor) -> List[torch.Tensor]:
        """The stage maps in channels-last memory: each is one copy of the rows into zeros, with no
        layout change after (a dense conv or BN reads channels-last as fast as NCHW)."""
        return [f.dense(memory_format=torch.channels_last) for f in self.forward_sparse(images, visible)]

    @staticmethod
    def _run_stem(modules: nn.ModuleList, x: SparseFeatures) -> SparseFeatures:
        for module in modules:
            x = run_layer(module, x)
        return x

    def macs(self, visible: torch.Tensor) -> int:
        """Multiply-accumulates of one forward pass on this mask (see :mod:`spark_sparse.flops`)."""
        return sparse_macs(self, visible)["total"]
