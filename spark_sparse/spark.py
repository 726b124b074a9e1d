"""The SparK model: sparse encoder → densify → LightDecoder → loss on the masked patches.

One method per step, as in the paper: ``mask`` (draw which patches stay visible), ``encode`` (the
encoder sees the visible patches only), ``densify`` (per stage, deepest first: normalise the active
sites, fill the masked ones with that stage's mask token, project to the decoder's width),
``decoder`` (dense upsampling back to pixels) and ``loss`` (per-patch normalised pixels, masked
patches only).

The encoder is either a :class:`~spark_sparse.SparseEncoder` (the product) or a
:class:`~spark_sparse.MaskedDenseEncoder` (SparK's reference): both take ``(images, visible)``.
With a SparseEncoder the densify norm runs on the (N, C) active rows of ``forward_sparse`` and the
map is made dense once, with the mask token as its fill; with the reference it runs on dense maps
with statistics over active sites. Both give the same numbers (tests/test_spark_model.py).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import List, Optional, Sequence, Tuple, Union

import timm
import torch
from torch import nn
from torchvision.utils import make_grid

from .convert import sparsify
from .decoder import LightDecoder
from .features import SparseFeatures
from .images import denormalize
from .layers.base import SparseModule
from .layers.norm import SparseBatchNorm2d
from .masks import MaskPyramid, check_mask_ratio, check_patches_both_ways, check_visible, dense_mask, random_visible
from .recipe import DECODER_WIDTH, DENSIFY_NORMS, MASK_RATIO
from .reference import MaskedDenseEncoder
from .registry import masked_forward

HEAD_FORMATS = ("channels_last", "contiguous")
ENCODER_KINDS = ("sparse", "masked_dense")  # SparseEncoder, or SparK's reference (MaskedDenseEncoder)
PATCH_NORM_EPS = 1e-6  # SparK's: added to each patch's (unbiased) variance


class _NoProbe:
    """What ``SparK.forward`` reports its phases to when nobody is timing it."""

    def phase(self, name: str):
        return nullcontext()

    def boundary(self, name: str, tensors) -> None:
        pass


NO_PROBE = _NoProbe()


def densify_norm_for(encoder: nn.Module) -> str:
    """'bn' when the backbone normalises with BatchNorm (ResNets), 'ln' otherwise (ConvNeXts)."""
    uses_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    return "bn" if uses_bn else "ln"


def is_sparse_encoder(encoder: nn.Module) -> bool:
    return callable(getattr(encoder, "forward_sparse", None))


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) → (B, L, patch·patch·C), patches in row-major order."""
    b, c, height, width = images.shape
    h, w = height // patch, width // patch
    x = images.reshape(b, c, h, patch, w, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, h * w, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, _, n = patches.shape
    c, (h, w) = n // (patch * patch), grid
    x = patches.reshape(b, h, w, patch, patch, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h * patch, w * patch)


def patch_statistics(patches: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each patch's mean and standard deviation over its pixels, (B, L, 1) each, from
    :func:`patchify`'s (B, L, N): unbiased variance plus ``PATCH_NORM_EPS``, as SparK."""
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + PATCH_NORM_EPS).sqrt()
    return mean, std


def paste_visible(images: torch.Tensor, reconstruction: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The reconstruction with the visible patches replaced by the input's (SparK's visualisation)."""
    patch = images.shape[-2] // visible.shape[1]
    keep = dense_mask(visible, 1, patch)
    return torch.where(keep, images, reconstruction.to(images.dtype))


def reconstruction_grid(images: torch.Tensor, visible: torch.Tensor, reconstruction: torch.Tensor,
                        patch_size: int, padding: int = 2) -> torch.Tensor:
    """SparK's figure as one (3, H', W') [0, 1] image: a column per image, rows input / masked input /
    reconstruction with the visible patches pasted back. ``images`` and ``reconstruction`` are
    normalised (B, 3, H, W) (the reconstruction in input space, see ``SparK.to_pixels``)."""
    x = images.detach().float()
    keep = torch.nn.functional.interpolate(visible[:, None].float(), scale_factor=patch_size)
    pixels = denormalize(x)  # already clamped to [0, 1]
    rows = torch.cat([pixels, pixels * keep, denormalize(paste_visible(x, reconstruction.detach().float(), visible))])
    return make_grid(rows.cpu(), nrow=x.shape[0], padding=padding, pad_value=1.0)


class SparK(nn.Module):
    """``model(images, visible=None)`` → the reconstruction loss (and, on request, the reconstruction).

    ``images`` are normalised (B, 3, H, W) with H, W multiples of the encoder's patch size; they are
    passed whole: the encoder reads only the visible patches, the loss reads the masked ones.
    ``visible`` (B, H/32, W/32) bool, True = visible, is drawn with ``mask_ratio`` when omitted.
    ``densify_norm``: 'auto' picks 'bn' for BatchNorm backbones and 'ln' otherwise.
    ``head_format``: memory format of the dense head (densify projections and decoder):
    'channels_last' (ours: faster) or 'contiguous' (NCHW, as SparK's own code runs it).
    ``decoder_checkpointing``: recompute each decoder block in the backward pass instead of keeping
    its activations (less memory, one more decoder forward; same numbers).
    ``encoder_checkpointing``: the same for the sparse encoder's residual blocks (one more encoder
    forward); the two together hold the step's peak memory lowest.
    """

    def __init__(self, encoder: nn.Module, *, decoder_width: int = DECODER_WIDTH, mask_ratio: float = MASK_RATIO,
                 densify_norm: str = "auto", head_format: str = "channels_last",
                 decoder_checkpointing: bool = False, encoder_checkpointing: bool = False):
        super().__init__()
        if not (hasattr(encoder, "patch_size") and hasattr(encoder, "channels")):
            raise TypeError(f"SparK takes an encoder made from a timm backbone — spark_sparse.sparsify(model) or "
                            f"spark_sparse.MaskedDenseEncoder(model) — got {type(encoder).__name__}")
        if encoder.in_channels != 3:
            raise ValueError(f"SparK reconstructs RGB images and its decoder paints 3 channels; this encoder takes "
                             f"{encoder.in_channels} (timm's in_chans): build the backbone with in_chans=3")
        self.mask_ratio = check_mask_ratio(mask_ratio, allow_zero=False)
        if densify_norm not in DENSIFY_NORMS:
            raise ValueError(f"densify_norm must be one of {DENSIFY_NORMS}, got {densify_norm!r}")
        if head_format not in HEAD_FORMATS:
            raise ValueError(f"head_format must be one of {HEAD_FORMATS}, got {head_format!r}")
        self.encoder = encoder
        if encoder_checkpointing:
            if not hasattr(encoder, "set_checkpointing"):
                raise ValueError(f"encoder_checkpointing needs the sparse encoder (spark_sparse.sparsify); "
                                 f"{type(encoder).__name__} does not recompute its blocks")
            encoder.set_checkpointing(True)
        self.patch_size = int(encoder.patch_size)
        self.densify_norm = densify_norm_for(encoder) if densify_norm == "auto" else densify_norm
        self.decoder = LightDecoder(self.patch_size, width=decoder_width, checkpointing=decoder_checkpointing)
        encoder_widths = list(reversed(encoder.channels))  # deepest first, as the decoder consumes them
        decoder_widths = self.decoder.stage_widths(len(encoder_widths))
        self.mask_tokens = nn.ParameterList()
        self.densify_norms = nn.ModuleList()
        self.densify_projs = nn.ModuleList()
        for i, (e_width, d_width) in enumerate(zip(encoder_widths, decoder_widths)):
            token = nn.Parameter(torch.zeros(1, e_width, 1, 1))
            nn.init.trunc_normal_(token, mean=0.0, std=0.02, a=-0.02, b=0.02)
            self.mask_tokens.append(token)
            self.densify_norms.append(self._make_norm(e_width))
            self.densify_projs.append(self._make_proj(i, e_width, d_width))
        # The dense head runs channels-last by default: densify already builds its maps that way (one
        # copy, see SparseFeatures.dense), and oneDNN / cuDNN are faster on it (decoder fwd+bwd, batch 16,
        # 2 CPU threads: 15.8 s against 17.3 s contiguous).
        self.head_format = head_format
        memory_format = torch.channels_last if head_format == "channels_last" else torch.contiguous_format
        self.densify_projs.to(memory_format=memory_format)
        self.decoder.to(memory_format=memory_format)

    def _make_norm(self, channels: int) -> nn.Module:
        if self.densify_norm == "bn":
            return SparseBatchNorm2d(channels)  # BatchNorm1d on the active rows
        if self.densify_norm == "ln":
            return nn.LayerNorm(channels, eps=1e-6)  # per site, as ConvNeXt's own norms
        return nn.Identity()

    @staticmethod
    def _make_proj(i: int, e_width: int, d_width: int) -> nn.Module:
        """1×1 at the deepest stage (identity when the widths agree), 3×3 elsewhere (as SparK).

        Shallower stages keep their 3×3 even when widths agree: it also spreads the active
        neighbours' features into the masked sites.
        """
        if i == 0 and e_width == d_width:
            return nn.Identity()
        k = 1 if i == 0 else 3
        return nn.Conv2d(e_width, d_width, kernel_size=k, stride=1, padding=k // 2, bias=True)

    # ---- the steps -------------------------------------------------------------------------------
    @property
    def encoder_kind(self) -> str:
        return ENCODER_KINDS[0] if is_sparse_encoder(self.encoder) else ENCODER_KINDS[1]

    def grid(self, images: torch.Tensor) -> Tuple[int, int]:
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size

    def mask(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """SparK's random mask for ``images``; refused where the ratio would show no patch or hide none at
        their size (every such step would be wasted: nothing to encode, or nothing to predict)."""
        size = "×".join(str(n) for n in images.shape[-2:])
        check_patches_both_ways(self.grid(images), self.mask_ratio, f"mask_ratio at image size {size}:")
        return random_visible(images.shape[0], self.grid(images), self.mask_ratio, generator=generator,
                              device=images.device)

    def encode(self, images: torch.Tensor, visible: torch.Tensor) -> list:
        """The encoder's stages, deepest first: SparseFeatures (sparse encoder) or dense maps (reference)."""
        if is_sparse_encoder(self.encoder):
            return list(reversed(self.encoder.forward_sparse(images, visible)))
        return list(reversed(self.encoder(images, visible)))

    def densify_stages(self, stages: list, visible: torch.Tensor) -> List[torch.Tensor]:
        """One dense map per stage at the decoder's width, deepest first (masked sites: mask tokens)."""
        if is_sparse_encoder(self.encoder):
            maps = [self._norm_rows(norm, x).dense(fill=token, memory_format=torch.channels_last)
                    for x, norm, token in zip(stages, self.densify_norms, self.mask_tokens)]
        else:
            masks = MaskPyramid(visible, self.patch_size, stages[0].dtype)
            maps = [torch.where(masks.like(x) > 0, y, token.to(y.dtype))
                    for x, norm, token in zip(stages, self.densify_norms, self.mask_tokens)
                    for y in (self._norm_dense(norm, x, masks),)]
        if self.head_format == "contiguous":
            maps = [m.contiguous() for m in maps]
        return [proj(m) for m, proj in zip(maps, self.densify_projs)]

    def densify(self, images: torch.Tensor, visible: torch.Tensor) -> List[torch.Tensor]:
        """Encode, then one dense map per stage at the decoder's width, deepest first."""
        return self.densify_stages(self.encode(images, visible), visible)

    @staticmethod
    def _norm_rows(norm: nn.Module, x: SparseFeatures) -> SparseFeatures:
        if isinstance(norm, SparseModule):
            return norm(x)
        return x.replace(norm(x.features))

    @staticmethod
    def _norm_dense(norm: nn.Module, x: torch.Tensor, masks: MaskPyramid) -> torch.Tensor:
        """The same norm on a dense map that is zero at masked sites (statistics over active sites)."""
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            return masked_forward(norm, x, masks, "densify_norm")
        if isinstance(norm, nn.LayerNorm):
            return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return norm(x)

    def loss(self, images: torch.Tensor, reconstruction: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """MSE to the per-patch normalised pixels, averaged over the masked patches only."""
        dtype = torch.promote_types(images.dtype, torch.float32)  # fp32 at least, also under AMP
        target = patchify(images.to(dtype), self.patch_size)
        mean, std = patch_statistics(target)
        target = (target - mean) / std
        per_patch = (patchify(reconstruction.to(dtype), self.patch_size) - target).square().mean(dim=-1)
        masked = (~visible).flatten(1).to(per_patch.dtype)
        return (per_patch * masked).sum() / masked.sum().clamp_min(1.0)

    def to_pixels(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Undo the per-patch normalisation with the input's own patch statistics (for viewing)."""
        dtype = torch.promote_types(images.dtype, torch.float32)
        mean, std = patch_statistics(patchify(images.detach().to(dtype), self.patch_size))
        rec = patchify(reconstruction.detach().to(dtype), self.patch_size) * std + mean
        return unpatchify(rec, self.patch_size, self.grid(images))

    def forward(self, images: torch.Tensor, visible: Optional[torch.Tensor] = None, *,
                generator: Optional[torch.Generator] = None, return_reconstruction: bool = False,
                probe=None) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Loss; with ``return_reconstruction`` also the (B, 3, H, W) reconstruction in input space
        (per-patch statistics restored; paste the visible patches back with :func:`paste_visible`).

        ``probe`` (e.g. a :class:`~spark_sparse.step_timer.StepTimer`) is told each phase and the
        tensors between phases, so a step can be split into where its time and memory go.
        """
        probe = probe or NO_PROBE
        if visible is None:
            visible = self.mask(images, generator)
        visible = check_visible(visible, images, self.patch_size)
        with probe.phase("encoder_fwd"):
            stages = self.encode(images, visible)
        probe.boundary("encoder", [x.features if isinstance(x, SparseFeatures) else x for x in stages])
        with probe.phase("densify"):
            maps = self.densify_stages(stages, visible)
        probe.boundary("densify", maps)
        with probe.phase("decoder_fwd"):
            reconstruction = self.decoder(maps)
        with probe.phase("loss"):
            loss = self.loss(images, reconstruction, visible)
        if return_reconstruction:
            return loss, self.to_pixels(images, reconstruction)
        return loss


def build_spark(arch: str, *, encoder_kind: str = "sparse", backend: str = "auto", drop_path: float = 0.0,
                decoder_width: int = DECODER_WIDTH, mask_ratio: float = MASK_RATIO, densify_norm: str = "auto",
                pretrained: bool = False, decoder_checkpointing: bool = False, encoder_checkpointing: bool = False,
                input_size: Optional[int] = None, patch_size: Optional[int] = None,
                channels: Optional[Sequence[int]] = None, strides: Optional[Sequence[int]] = None) -> SparK:
    """A SparK model around a fresh timm backbone; the keyword names are a checkpoint's ``model_config``.

    ``encoder_kind``: 'sparse' (SparseEncoder) or 'masked_dense' (SparK's reference encoder).
    ``input_size`` is a record only (the model takes any multiple of the patch size); ``patch_size``,
    ``channels`` and ``strides``, when given, must be what timm builds for ``arch`` (a checkpoint made
    with another timm version could differ). Any other keyword is refused, as a misspelt one would
    otherwise be ignored.
    """
    if encoder_kind not in ENCODER_KINDS:
        raise ValueError(f"encoder_kind must be one of {ENCODER_KINDS}, got {encoder_kind!r}")
    backbone = timm.create_model(arch, pretrained=pretrained, drop_path_rate=drop_path)
    encoder = sparsify(backbone, backend=backend) if encoder_kind == "sparse" else MaskedDenseEncoder(backbone)
    built = {"patch_size": encoder.patch_size, "channels": list(encoder.channels), "strides": list(encoder.strides)}
    for key, recorded in (("patch_size", patch_size), ("channels", channels), ("strides", strides)):
        if recorded is not None and (list(recorded) if key != "patch_size" else recorded) != built[key]:
            raise ValueError(f"{key} {recorded} was recorded for {arch}, but timm {timm.__version__} builds it with "
                             f"{built[key]}")
    return SparK(encoder, decoder_width=decoder_width, mask_ratio=mask_ratio, densify_norm=densify_norm,
                 decoder_checkpointing=decoder_checkpointing, encoder_checkpointing=encoder_checkpointing)


# what a checkpoint's model_config holds (spark_sparse/io/checkpoint.py refuses one that lacks any)
MODEL_CONFIG_KEYS = ("arch", "encoder_kind", "backend", "drop_path", "decoder_width", "densify_norm", "mask_ratio",
                     "input_size", "patch_size", "channels", "strides")


def model_config(model: SparK, arch: str, *, backend: str, drop_path: float, input_size: int) -> dict:
    """Everything :func:`build_spark` needs to rebuild ``model`` (stored in checkpoints)."""
    return {"arch": arch, "encoder_kind": model.encoder_kind, "backend": backend, "drop_path": float(drop_path),
            "decoder_width": int(model.decoder.widths[0]), "densify_norm": model.densify_norm,
            "mask_ratio": float(model.mask_ratio), "input_size": int(input_size),
            "patch_size": int(model.patch_size), "channels": [int(c) for c in model.encoder.channels],
            "strides": [int(s) for s in model.encoder.strides]}
