"""Which parts of a timm backbone form the encoder, where its four stage outputs are, and the one
loop that runs them.

Read from the model's ``feature_info`` (timm's own record of its stages), so any backbone that
exposes one works: the encoder runs the model's children in order up to the last stage, and
drops what follows (pooling, classifier head). Every encoder (sparse, masked-dense, plain dense)
and the dense MAC count run the plan through :func:`run_plan`; they differ only in how one module
is called.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple, TypeVar

import torch
from torch import nn

T = TypeVar("T")
Step = Callable[[nn.Module, T, str], T]  # (module, input, its path) -> output

STAGE_STRIDES = (4, 8, 16, 32)
PATCH_SIZE = STAGE_STRIDES[-1]  # every accepted backbone's total stride: the side of a mask's patch


@dataclass(frozen=True)
class EncoderPlan:
    run: Tuple[str, ...]         # module paths called in sequence
    features: Tuple[str, ...]    # paths whose outputs are the stage maps
    strides: Tuple[int, ...]
    channels: Tuple[int, ...]

    @property
    def patch_size(self) -> int:
        return self.strides[-1]

    @property
    def top_level(self) -> Tuple[str, ...]:
        """The model's direct children the encoder keeps (their state_dict keys are the encoder's)."""
        seen: List[str] = []
        for path in self.run:
            head = path.split(".")[0]
            if head not in seen:
                seen.append(head)
        return tuple(seen)

    @classmethod
    def from_model(cls, model: nn.Module) -> "EncoderPlan":
        info = getattr(model, "feature_info", None)
        if not info:
            raise TypeError(f"{type(model).__name__} has no timm feature_info: pass a timm ResNet or ConvNeXt "
                            f"(timm.create_model(...)) or a backbone that lists its stages in feature_info")
        stages = [dict(f) for f in info if f["reduction"] in STAGE_STRIDES]
        strides = tuple(f["reduction"] for f in stages)
        if strides != STAGE_STRIDES:
            raise ValueError(f"{type(model).__name__}: expected stages at strides {STAGE_STRIDES}, feature_info "
                             f"gives {strides} (output_stride / dilated backbones are not supported)")
        feature_paths = tuple(f["module"] for f in stages)
        run: List[str] = []

        def walk(prefix: str, module: nn.Module) -> bool:
            for name, child in module.named_children():
                path = prefix + name
                if path in feature_paths or not any(p.startswith(path + ".") for p in feature_paths):
                    run.append(path)
                elif walk(path + ".", child):
                    return True
                if path == feature_paths[-1]:
                    return True
            return False

        walk("", model)
        missing = [p for p in feature_paths if p not in run]
        if missing:
            raise ValueError(f"stage modules {missing} from feature_info were not found in the model")
        return cls(tuple(run), feature_paths, strides, tuple(int(f["num_chs"]) for f in stages))


def run_plan(root: nn.Module, plan: EncoderPlan, x: T, step: Step) -> List[T]:
    """Run ``step`` on each module of ``plan.run`` under ``root`` in order; the stage outputs."""
    outputs = []
    for path in plan.run:
        x = step(root.get_submodule(path), x, path)
        if path in plan.features:
            outputs.append(x)
    return outputs


def encoder_part(model: nn.Module) -> Tuple[EncoderPlan, Dict[str, nn.Module]]:
    """The plan of ``model`` and a copy of the children it runs, under their own names."""
    plan = EncoderPlan.from_model(model)
    return plan, {name: copy.deepcopy(model.get_submodule(name)) for name in plan.top_level}


class PlannedEncoder(nn.Module):
    """An encoder made of a backbone's children (same names, so the same state_dict keys) and run by
    its plan: ``encoder(images, visible) -> one map per stage``."""

    def __init__(self, plan: EncoderPlan, children: Dict[str, nn.Module]):
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)
        self.plan = plan

    @property
    def strides(self) -> List[int]:
        return list(self.plan.strides)

    @property
    def channels(self) -> List[int]:
        return list(self.plan.channels)

    @property
    def patch_size(self) -> int:
        """The total stride: masks live on a grid of patches this many pixels wide."""
        return self.plan.patch_size

    @property
    def in_channels(self) -> int:
        """The channels the first layer takes (3 for RGB; timm's ``in_chans``)."""
        return in_channels(self)

    def check_images(self, images) -> None:
        """Images whose dtype differs from the weights' fail deep inside torch, some layers in: say so
        first (under autocast each layer casts for itself, so any floating dtype goes)."""
        weight = next(self.parameters(), None)
        if (weight is not None and isinstance(images, torch.Tensor) and images.is_floating_point()
                and images.dtype != weight.dtype and not torch.is_autocast_enabled(images.device.type)):
            raise TypeError(f"images are {images.dtype}, the encoder's weights {weight.dtype}: cast the images "
                            f"(images.to({weight.dtype})) or the model (model.to({images.dtype})), or run under "
                            f"torch.autocast")

    def run_plan(self, x: T, step: Step) -> List[T]:
        return run_plan(self, self.plan, x, step)


def in_channels(model: nn.Module) -> int:
    """The input channels of a backbone: those of its first layer that has any (a dense conv's own,
    or a sparse conv's spec's)."""
    for module in list(model.modules())[1:]:
        for owner in (module, getattr(module, "spec", None)):
            if isinstance(getattr(owner, "in_channels", None), int):
                return owner.in_channels
    raise ValueError(f"{type(model).__name__}: no layer with in_channels, cannot tell the input's channels")
