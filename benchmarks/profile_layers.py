"""Per-layer profile: every sparse layer on its real input against its dense twin.

One forward of the sparse encoder runs with a pre-hook on every leaf layer; the hook stops there
and times, interleaved, (a) the sparse layer on the input it was just given, (b) its dense twin —
the timm model's layer at the same path — on the same input scattered to a dense map (zeros at
masked sites), and (c) the masked-dense twin: the dense twin plus SparK's masking, as the
reference runs it (re-masked output, BN statistics over active sites). Then the forward goes on.
Index tables are built once per batch and cached, so they appear in the "rest" — whole encoder
minus the sum of its layers — together with residual adds and the final densify.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch
from torch import nn

import spark_sparse as ss
from spark_sparse.spec import compute_dtype
from spark_sparse.features import SparseFeatures
from spark_sparse.flops import conv_macs
from spark_sparse.layers.base import RoutedConv, RoutedModule, SparseModule
from spark_sparse.masks import MaskPyramid
from spark_sparse.recipe import MASK_RATIO
from spark_sparse.registry import masked_forward
from spark_sparse.routing import candidates, label, layer_kind, unsupported
from spark_sparse.precision import DTYPES, autocast

from .contenders import Call, Contender, create_model, encoder_call, make_inputs
from .routes import tune
from .timing import median_ms, time_interleaved

PROFILE_MODES = ("fwd", "fwd_bwd")


def _channels_last_twin(module: nn.Module) -> bool:
    """Dense layers that act on the last dimension (Linear, channels-last LayerNorm, channels-last GRN)
    take NHWC maps, as in the dense model."""
    from timm.layers import LayerNorm2d
    return (isinstance(module, nn.Linear) or getattr(module, "channel_dim", None) == -1
            or (isinstance(module, nn.LayerNorm) and not isinstance(module, LayerNorm2d)))


def how(module: nn.Module, x: SparseFeatures) -> str:
    """How a sparse layer computes: for routed layers (convs, Linears, max-pools) their shape and the router's
    choice for this input ('3x3 tiles', '1x1 matmul', '7x7 dw dense', '3x3/2 maxpool-tiles', …),
    the one the layer's forward makes."""
    if not isinstance(module, RoutedModule):
        return "sparse" if isinstance(module, SparseModule) else "per site"
    s = module.layer_spec(x)
    name = f"{s.kernel[0]}x{s.kernel[1]}" + (f"/{s.stride[0]}" if s.stride[0] > 1 else "")
    return f"{name} {module.route_for(x).label}"


def layer_macs(module: nn.Module, sites: int, dense_sites: int):
    """Exact MACs of a conv or Linear layer on ``sites`` inputs, and of its dense twin on all sites."""
    if isinstance(module, RoutedConv):  # convs, and Linears (1×1 convs on the rows)
        area = module.spec.stride[0] * module.spec.stride[1]
        return {"sparse": conv_macs(sites // area, module), "dense": conv_macs(dense_sites // area, module)}
    return None


def with_request(module: RoutedModule, implementation: str):
    """``module`` run with ``implementation`` requested for one call, then set back: the profile's
    per-implementation columns."""
    def run(x):
        kept = module.requested
        module.requested = implementation
        try:
            return module(x)
        finally:
            module.requested = kept
    return run


def compared_implementations(module: RoutedModule, x: SparseFeatures, compare_backends) -> List[str]:
    """What the profile times a routed layer on besides its route: for a table conv, each of
    ``compare_backends`` that can run it here; for a 1×1 or depthwise conv or a max-pool, every
    candidate here (patchify convs have one implementation)."""
    dtype = compute_dtype(x.features)
    spec = module.layer_spec(x)
    kind = layer_kind(spec, x.level.r)
    if kind == "table":
        return [b for b in compare_backends if unsupported(b, spec, x.level.r, x.features.device, dtype) is None]
    if kind in ("pointwise", "depthwise", "maxpool"):
        return candidates(spec, x.level.r, x.features.device, dtype)
    return []


def _output(y):
    return y.features if isinstance(y, SparseFeatures) else y


def _layer_call(fn, make_input, mode: str, module: nn.Module, device, amp_dtype, grad: Dict[str, torch.Tensor],
                key: str) -> Call:
    """Time ``fn(input)`` (fwd) or its forward+backward with a fixed random output gradient."""
    state = {}

    def reset():
        module.zero_grad(set_to_none=True)
        state["x"] = make_input(mode == "fwd_bwd")  # fresh each time: some layers work in place

    def run():
        if mode == "fwd":
            with torch.no_grad(), autocast(device, amp_dtype):
                fn(state["x"])
            return
        with torch.enable_grad():
            with autocast(device, amp_dtype):
                out = _output(fn(state["x"]))
            if key not in grad:
                grad[key] = torch.randn(out.shape, device=out.device, dtype=out.dtype)
            out.backward(grad[key].to(out.dtype))

    return Call(run, reset)


def _fresh(t: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """A new copy of ``t``; with a gradient, a non-leaf one (in-place layers such as ReLU accept it)."""
    t = t.detach().clone()
    if requires_grad and t.is_floating_point():
        with torch.enable_grad():  # the profile runs inside the encoder's no-grad forward
            return t.requires_grad_().clone()
    return t


def profile_model(model_name: str, *, device: str = "cpu", dtype: str = "fp32", batch: int = 8,
                  image_size=(224, 224), ratio: float = MASK_RATIO, backend: str = "auto", warmup: int = 1,
                  repeats: int = 3, seed: int = 0, dense_format: str = "contiguous", progress: bool = True,
                  modes=PROFILE_MODES, compare_backends=()) -> dict:
    """The per-layer profile of ``model_name`` (a dict for the results document).

    ``compare_backends``: every conv that goes through a backend is also timed on each of these
    (columns ``sparse[<name>]``), the measurements behind ``auto``'s per-layer rule table; every
    depthwise conv is timed on each implementation that can run it here (``sparse[dw <impl>]``).
    """
    dev = torch.device(device)
    amp_dtype = DTYPES[dtype]
    torch.manual_seed(seed)
    model = create_model(model_name, dev)
    encoder = ss.sparsify(model, backend=backend)
    twins = copy.deepcopy(model)
    reference = ss.MaskedDenseEncoder(model)
    fmt = torch.channels_last if dense_format == "channels_last" else torch.contiguous_format
    twins.to(memory_format=fmt)
    reference.to(memory_format=fmt)
    images, visible = make_inputs(batch, tuple(image_size), ratio, seed, dev)
    tuning = tune(encoder, images, visible, amp_dtype)  # no layer is tuned inside a timed call
    masks = MaskPyramid(visible, encoder.patch_size, images.dtype)
    leaves = [(p, m) for p, m in encoder.named_modules() if p and not list(m.children())
              and not isinstance(m, nn.Identity)]

    from tqdm import tqdm
    bar = tqdm(total=len(leaves), desc=f"profile {model_name}", unit="layer", disable=not progress, leave=False)
    templates: Dict[int, SparseFeatures] = {}
    layers: List[dict] = []
    grads: Dict[str, torch.Tensor] = {}

    busy = []  # while a layer is being timed, its own calls must not trigger the hooks again

    def track(module, args):
        if not busy and args and isinstance(args[0], SparseFeatures):
            templates[args[0].features.shape[0]] = args[0]

    def profile_leaf(path: str, module: nn.Module, args):
        if busy:
            return
        busy.append(path)
        try:
            _profile_leaf(path, module, args)
        finally:
            busy.pop()

    def _profile_leaf(path: str, module: nn.Module, args):
        x = args[0]
        sf = x if isinstance(x, SparseFeatures) else templates[x.shape[0]].replace(x)
        try:
            twin: Optional[nn.Module] = twins.get_submodule(path)
        except AttributeError:
            twin = None
        channels_last = twin is not None and _channels_last_twin(twin)
        masked_in = sf.dense().contiguous(memory_format=fmt)  # NCHW, as the masked-dense reference runs
        dense_in = masked_in.permute(0, 2, 3, 1).contiguous() if channels_last else masked_in

        def sparse_input(g):
            return sf.replace(_fresh(sf.features, g)) if isinstance(x, SparseFeatures) else _fresh(x, g)

        calls = {}
        for mode in modes:
            calls[("sparse", mode)] = _layer_call(module, sparse_input, mode, module, dev, amp_dtype, grads,
                                                  f"{path}:sparse")
            if twin is not None:
                calls[("dense", mode)] = _layer_call(twin, lambda g: _fresh(dense_in, g), mode, twin, dev,
                                                     amp_dtype, grads, f"{path}:dense")
                calls[("masked-dense", mode)] = _layer_call(
                    lambda t: masked_forward(twin, t, masks, path), lambda g: _fresh(masked_in, g), mode, twin,
                    dev, amp_dtype, grads, f"{path}:masked")
            compared = compared_implementations(module, sf, compare_backends) \
                if isinstance(module, RoutedModule) else []
            for impl in compared:
                calls[(f"sparse[{label(impl)}]", mode)] = _layer_call(
                    with_request(module, impl), sparse_input, mode, module, dev, amp_dtype, grads, f"{path}:sparse")
        times, errors = time_interleaved({f"{k}|{m}": c for (k, m), c in calls.items()}, warmup=warmup,
                                         repeats=repeats, device=dev)
        route = module.route_for(sf) if isinstance(module, RoutedModule) else None
        row = {"path": path, "type": type(module).__name__, "how": how(module, sf),
               "route": None if route is None else {"implementation": route.implementation, "reason": route.reason},
               "sites": sf.features.shape[0], "dense_sites": masked_in.numel() // sf.channels,
               "channels": sf.channels, "stride": sf.stride, "dense_layout": "NHWC" if channels_last else "NCHW",
               "time_ms": {}, "errors": errors}
        macs = layer_macs(module, row["sites"], row["dense_sites"])
        if macs is not None:
            row["macs"] = macs
        for key, t in times.items():
            kind, mode = key.split("|")
            row["time_ms"].setdefault(mode, {})[kind] = median_ms(t)
        layers.append(row)
        bar.update(1)

    hooks = [m.register_forward_pre_hook(track) for _, m in encoder.named_modules()]
    hooks += [m.register_forward_pre_hook(lambda mod, args, p=p: profile_leaf(p, mod, args)) for p, m in leaves]
    try:
        with torch.no_grad():
            encoder.forward_sparse(images, visible)
    finally:
        for h in hooks:
            h.remove()
        bar.close()

    whole = _whole(encoder, reference, images, visible, dev, amp_dtype, modes, warmup, repeats, fmt)
    totals = {}
    for mode in modes:
        def total(kind):
            return sum(r["time_ms"].get(mode, {}).get(kind, 0.0) for r in layers)
        sparse_whole = whole.get(f"sparse|{mode}")
        totals[mode] = {"sparse_layers": total("sparse"), "dense_layers": total("dense"),
                        "masked_dense_layers": total("masked-dense"), "sparse_whole": sparse_whole,
                        "masked_dense_whole": whole.get(f"masked-dense|{mode}"),
                        "sparse_rest": None if sparse_whole is None else sparse_whole - total("sparse")}
    return {"model": model_name, "device": dev.type, "dtype": dtype, "batch": batch, "image_size": list(image_size),
            "mask_ratio": ratio, "backend": backend, "compare_backends": list(compare_backends),
            "dense_format": dense_format, "repeats": repeats,
            "modes": list(modes), "visible_patches": int(visible.sum()), "total_patches": visible.numel(),
            "layers": layers, "totals": totals, "tuning": tuning}


def _whole(encoder, reference, images, visible, dev, amp_dtype, modes, warmup, repeats, fmt) -> Dict[str, float]:
    contenders = [Contender("sparse", "sparse", encoder), Contender("masked-dense", "masked_dense", reference,
                                                                    memory_format="channels_last"
                                                                    if fmt == torch.channels_last else "contiguous")]
    calls = {f"{c.name}|{mode}": encoder_call(c, mode, images, visible, amp_dtype)
             for c in contenders for mode in modes}
    times, _ = time_interleaved(calls, warmup=warmup, repeats=repeats, device=dev)
    return {k: median_ms(t) for k, t in times.items()}
