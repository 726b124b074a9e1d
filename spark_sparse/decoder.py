"""SparK's LightDecoder: a small dense U-Net-style upsampler from stride 32 back to pixels.

Each upsampling step doubles the resolution and halves the width (768 → 384 → … for a stride-32
backbone: five steps). The densified map of each encoder stage is added to the decoder's input at
that stage's resolution, deepest first, before the step that upsamples it. A final 1×1 conv maps
to RGB. Everything here is dense: the decoder must paint masked patches, so it sees every site.

Parameter names (``dec.{i}.up_sample``, ``dec.{i}.conv.{0,1,3,4}``, ``proj``) are those of SparK's
released checkpoints, so their decoder weights load by a plain prefix rename.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn

from .activation import relu6_
from .plan import PATCH_SIZE
from .recipe import DECODER_WIDTH
from .recompute import recomputing, run_recomputed
from .upsample import Upsample2x, convolution_output_channels_last, set_backward_as_convs
from .upsample_conv import composed_phases, composition_pays, interleave, phase_batch_norm

# Checkpointing recomputes only the blocks whose output is at this stride or finer. Every block does
# the same MACs (the width halves as the side doubles) but holds twice the activations of the one
# before it: the last three blocks (outputs at strides 4, 2 and 1) hold about 90 % of the decoder's
# activations for 60 % of its forward time; recomputing the two deepest too cut the resnet50 step's
# peak memory (224², fp32, batch 16) by a few points more for ~8 % more step time.
RECOMPUTE_MAX_STRIDE = 4


class UpsampleBlock(nn.Module):
    """ConvTranspose2d(k4, s2, p1) → Conv3×3 → BN → ReLU6 → Conv3×3 → BN (SparK's ``UNetBlock``).

    On the CPU, where the map is large enough for it to pay, the first two (both linear, nothing
    between them) run as one composed 3×3 conv (spark_sparse/upsample_conv.py), and the ReLU6 runs
    in place without torch's hidden copy (spark_sparse/activation.py). ``as_published`` (see
    :meth:`LightDecoder.set_as_published`) runs every layer as SparK's own code does.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.as_published = False
        self.up_sample = Upsample2x(in_channels)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.as_published:
            return self.conv(self.up_sample(x))
        first_conv, norm, _, second_conv, second_norm = self.conv
        if self.composes(x):
            # normalised as four phase maps, interleaved into the 2× map through the ReLU6: one copy
            phases = composed_phases(x, self.up_sample.weight, self.up_sample.bias, first_conv.weight)
            x = interleave(phase_batch_norm(norm, phases), convolution_output_channels_last(x, first_conv.weight),
                           relu6=True)
        else:
            x = relu6_(norm(first_conv(self.up_sample(x))))
        return second_norm(second_conv(x))

    def composes(self, x: torch.Tensor) -> bool:
        """Whether this call runs the upsampling and the first conv as one composed conv."""
        return (not self.as_published and x.device.type == "cpu"
                and composition_pays(x.shape[0], x.shape[1], x.shape[2], x.shape[3]))


def check_width(width: int, patch_size: int = PATCH_SIZE, what: str = "decoder width") -> int:
    """``width``, or ValueError naming ``what``: the decoder halves its width once per upsampling
    step, log2(patch_size) times, and every step needs at least one channel."""
    steps = int(round(math.log2(patch_size)))
    if width < 2 ** steps:
        raise ValueError(f"{what} {width} is too small to halve {steps} times; use at least {2 ** steps}")
    return width


class LightDecoder(nn.Module):
    """Dense decoder: ``decoder([map_s32, map_s16, map_s8, map_s4])`` → (B, 3, H, W).

    ``width`` is the channel count at the deepest stage (SparK: 768); each step halves it.
    ``widths`` tells a head which width to project each stage to: (768, 384, 192, 96, ...).
    ``checkpointing``: in training, keep only the input of each block that upsamples to stride
    ``RECOMPUTE_MAX_STRIDE`` or finer and recompute the block in the backward pass
    (torch.utils.checkpoint): most of the decoder's activations for 3/5 of one more decoder forward.
    """

    def __init__(self, patch_size: int = PATCH_SIZE, width: int = DECODER_WIDTH, out_channels: int = 3,
                 checkpointing: bool = False):
        super().__init__()
        self.checkpointing = checkpointing
        steps = int(round(math.log2(patch_size)))
        if 2 ** steps != patch_size:
            raise ValueError(f"patch_size must be a power of 2 (the decoder doubles the resolution per step), "
                             f"got {patch_size}")
        check_width(width, patch_size)
        channels = [width // 2 ** i for i in range(steps + 1)]
        self.patch_size = patch_size
        self.widths = tuple(channels[:-1])
        self.dec = nn.ModuleList(UpsampleBlock(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.recomputed = tuple(i for i in range(steps) if patch_size // 2 ** (i + 1) <= RECOMPUTE_MAX_STRIDE)
        self.proj = nn.Conv2d(channels[-1], out_channels, kernel_size=1, stride=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SparK's initialisation: convs truncated-normal (std 0.02), transposed convs Kaiming-normal
        (fan-out), norms weight 1 and bias 0, every bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, stage_maps: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """``stage_maps`` deepest first, each already at this decoder's width for its stage (or None)."""
        x = 0
        for i, block in enumerate(self.dec):
            if i < len(stage_maps) and stage_maps[i] is not None:
                x = x + stage_maps[i]
            if self.checkpointing and i in self.recomputed and recomputing(self):
                x = run_recomputed(block, block, x)
            else:
                x = block(x)
        return self.proj(x)

    def set_as_published(self, enabled: bool) -> None:
        """Run every block as SparK's own code does (True: torch's transposed conv and its backward,
        no composition, torch's in-place ReLU6) or ours (False, the default). The numbers are the
        same up to rounding; the benchmark's "SparK as published" contender uses True."""
        set_backward_as_convs(self, not enabled)
        for block in self.dec:
            block.as_published = enabled

    def stage_widths(self, num_stages: int) -> List[int]:
        """Decoder widths of the deepest ``num_stages`` encoder stages, deepest first."""
        return list(self.widths[:num_stages])

