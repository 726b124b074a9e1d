"""One benchmark case: one model at one batch size on one device and dtype.

The contenders are built from one set of weights, and (lazily) their SparK steps. The CPU memory
child process rebuilds the same Case from :meth:`Case.spec`, so both see the same weights, masks
and formats.

The whole-step mode has contenders of its own beside the encoders' (``step_contenders``):
each sparse one under extra autocast dtypes (``'sparse[auto] bf16'``), with decoder checkpointing
(``'sparse[auto] ckpt'``) and with encoder and decoder checkpointing (``'sparse[auto] ckpt-all'``,
on its own copy of the encoder, whose blocks are set to recompute) when asked, and
``'spark-published'``: the masked-dense
encoder and the decoder run the way SparK's own code runs them (NCHW, fp32, eager), on its own
copy of the weights so no other contender's memory format reaches it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

import spark_sparse as ss
from spark_sparse.precision import DTYPES, autocast
from spark_sparse.recipe import DECODER_WIDTH

from .config import PUBLISHED, step_variants
from .contenders import Call, Contender, build_contenders, create_model, encoder_call, make_inputs
from .step import make_step


@dataclass
class StepContender:
    """A contender of the whole step: which encoder, under which autocast dtype, with which head."""
    name: str
    kind: str                      # 'sparse', 'masked_dense', 'dense', 'published'
    contender: Contender
    amp: str                       # 'fp32', 'bf16', 'fp16'
    head_format: str = "channels_last"
    decoder_checkpointing: bool = False
    encoder_checkpointing: bool = False

    def describe(self) -> dict:
        c = self.contender
        return {"kind": c.kind if self.kind != "published" else "published", "backend": c.backend,
                "memory_format": c.memory_format, "amp": self.amp, "head_format": self.head_format,
                "decoder_checkpointing": self.decoder_checkpointing,
                "encoder_checkpointing": self.encoder_checkpointing, "modes": ["step"]}


class Case:
    """One model at one batch size on one device and dtype: its contenders, inputs and SparK steps."""

    def __init__(self, model_name: str, device: str, dtype: str, batch: int, image_size: Tuple[int, int],
                 backends: List[str], seed: int = 0, formats: Optional[Dict[str, str]] = None,
                 decoder_width: int = DECODER_WIDTH, step_dtypes: Tuple[str, ...] = (),
                 decoder_checkpointing: bool = False, published: bool = True, step_backends: Optional[List[str]] = None,
                 encoder_checkpointing: bool = False):
        self.model_name, self.dtype, self.batch = model_name, dtype, batch
        self.image_size, self.backends, self.seed = tuple(image_size), list(backends), seed
        self.decoder_width = decoder_width
        self.step_dtypes, self.decoder_checkpointing = [d for d in step_dtypes if d != dtype], decoder_checkpointing
        self.encoder_checkpointing = encoder_checkpointing
        self.published = published
        self.step_backends = list(step_backends) if step_backends is not None else None  # variants of these only
        self.device = torch.device(device)
        self.amp_dtype = DTYPES[dtype]
        torch.manual_seed(seed)  # the same weights in the memory child process
        self.model = create_model(model_name, self.device)
        self._published_model = copy.deepcopy(self.model) if published else None  # before any format change
        self.contenders = {c.name: c for c in build_contenders(self.model, self.backends)}
        for name, fmt in (formats or {}).items():
            self.contenders[name].set_format(fmt)
        self._steps: Dict[str, object] = {}
        self._step_contenders: Optional[Dict[str, StepContender]] = None

    @classmethod
    def from_spec(cls, spec: dict) -> "Case":
        return cls(spec["model"], spec["device"], spec["dtype"], spec["batch"], spec["image_size"],
                   spec["backends"], spec["seed"], spec["formats"], spec["decoder_width"],
                   tuple(spec.get("step_dtypes", ())), spec.get("decoder_checkpointing", False),
                   spec.get("published", True), spec.get("step_backends"), spec.get("encoder_checkpointing", False))

    def spec(self, ratios: List[float], modes: List[str], threads: int) -> dict:
        return {"model": self.model_name, "device": self.device.type, "dtype": self.dtype, "batch": self.batch,
                "image_size": list(self.image_size), "backends": self.backends, "seed": self.seed,
                "formats": {n: c.memory_format for n, c in self.contenders.items() if c.kind != "sparse"},
                "ratios": list(ratios), "modes": list(modes), "threads": threads, "decoder_width": self.decoder_width,
                "step_dtypes": list(self.step_dtypes), "decoder_checkpointing": self.decoder_checkpointing,
                "encoder_checkpointing": self.encoder_checkpointing, "published": self.published,
                "step_backends": self.step_backends}

    def inputs(self, ratio: float) -> Tuple[torch.Tensor, torch.Tensor]:
        return make_inputs(self.batch, self.image_size, ratio, self.seed, self.device)

    def step_contenders(self) -> Dict[str, StepContender]:
        """Every contender of the whole step, by name (see the module's docstring)."""
        if self._step_contenders is not None:
            return self._step_contenders
        out: Dict[str, StepContender] = {}
        for name, c in self.contenders.items():
            out[name] = StepContender(name, c.kind, c, self.dtype)
            if c.kind != "sparse" or (self.step_backends is not None and c.backend not in self.step_backends):
                continue
            for variant, (amp, decoder_ckpt, encoder_ckpt) in step_variants(
                    name, self.dtype, self.step_dtypes, self.decoder_checkpointing, self.encoder_checkpointing).items():
                out[variant] = StepContender(variant, "sparse", c, amp, decoder_checkpointing=decoder_ckpt,
                                             encoder_checkpointing=encoder_ckpt)
        if self.published:
            enc = Contender(PUBLISHED, "masked_dense", ss.MaskedDenseEncoder(self._published_model))
            out[PUBLISHED] = StepContender(PUBLISHED, "published", enc, "fp32", head_format="contiguous")
        self._step_contenders = out
        return out

    def step(self, name: str):
        """The SparK step of step contender ``name`` (built once), or a string saying why there is none."""
        if name not in self._steps:
            sc = self.step_contenders()[name]
            try:
                # recomputing blocks is a setting of the encoder's own modules: on a copy, so that the
                # other contenders sharing this encoder keep their activations
                encoder = copy.deepcopy(sc.contender.encoder) if sc.encoder_checkpointing else sc.contender.encoder
                self._steps[name] = make_step(encoder, amp_dtype=DTYPES[sc.amp],
                                              decoder_width=self.decoder_width, head_format=sc.head_format,
                                              decoder_checkpointing=sc.decoder_checkpointing,
                                              encoder_checkpointing=sc.encoder_checkpointing,
                                              as_published=sc.kind == "published")
            except Exception as e:
                self._steps[name] = f"unavailable (SparK({sc.kind}) failed: {type(e).__name__}: {e})"
        return self._steps[name]

    def conv_plans(self, images: torch.Tensor, visible: torch.Tensor) -> Dict[str, List[str]]:
        """How each sparse contender runs each of its convs and Linears on these inputs ('3x3 torch',
        '1x1 matmul', …)."""
        from .profile_layers import how
        from spark_sparse.layers.base import RoutedConv
        plans: Dict[str, List[str]] = {}
        for name, c in self.contenders.items():
            if c.kind != "sparse":
                continue
            plan = plans.setdefault(name, [])
            hooks = [m.register_forward_pre_hook(lambda m, args: plan.append(how(m, args[0])))
                     for m in c.encoder.modules() if isinstance(m, RoutedConv)]
            try:
                with torch.no_grad(), autocast(self.device, self.amp_dtype):
                    c.encoder.forward_sparse(images, visible)
            finally:
                for h in hooks:
                    h.remove()
        return plans

    def calls(self, mode: str, images: torch.Tensor, visible: torch.Tensor,
              only=None) -> Tuple[Dict[str, Call], Dict[str, str]]:
        """The call of every contender (of ``only`` those, when given) in ``mode``, and why any has none."""
        calls: Dict[str, Call] = {}
        unavailable: Dict[str, str] = {}
        if mode != "step":
            for name, c in self.contenders.items():
                if only is None or name in only:
                    calls[name] = encoder_call(c, mode, images, visible, self.amp_dtype)
            return calls, unavailable
        for name, sc in self.step_contenders().items():
            if only is not None and name not in only:
                continue
            step = self.step(name)
            if isinstance(step, str):
                unavailable[name] = step
            else:
                x = sc.contender.format_input(images)
                calls[name] = Call(lambda step=step, x=x: step(x, visible), step.reset)
        return calls, unavailable

    def head_macs(self, images: torch.Tensor, visible: torch.Tensor, dense: int) -> Optional[int]:
        """Forward MACs of the dense SparK head (densify + decoder), the same for every contender."""
        step = self.step("masked-dense")
        if isinstance(step, str):
            return None
        return step.forward_macs(self.contenders["masked-dense"].format_input(images), visible) - dense
