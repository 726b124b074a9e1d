"""Which parts of a timm backbone form the encoder, and where its four stage outputs are.

Read from the model's ``feature_info`` (timm's own record of its stages), so any backbone that
exposes one works: the encoder runs the model's children in order up to the last stage, and
drops what follows (pooling, classifier head).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from torch import nn

STAGE_STRIDES = (4, 8, 16, 32)


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
