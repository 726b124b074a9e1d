"""The whole SparK model (encoder → densify → decoder → loss) with the sparse encoder equals the same
model with SparK's masked-dense encoder: the loss, the reconstruction, every parameter gradient and
every running statistic, on the same weights, mask and seed.

fp64 proves the semantics (FP64_TOL, tests/equivalence.py); fp32 is compared with the fp64 truth and
held to the contract's tolerances plus the reference's own fp32 error, measured in the same test
(see tests/equivalence.py for why).
"""

import pytest
import torch
from torch import nn

import spark_sparse as ss
from tests.equivalence import FP64_TOL, NOISE_FACTOR, build_model, rel_max, rel_norm
from spark_sparse.features import SparseFeatures
from spark_sparse.spark import SparK, patchify, paste_visible, unpatchify


def randomize_head(model: SparK, seed: int) -> SparK:
    """Non-trivial densify/decoder norms and mask tokens, as after some training."""
    g = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if name.startswith("encoder"):
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
            module.bias.data.copy_(torch.rand(module.bias.shape, generator=g) * 0.4 - 0.2)
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=g) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
            module.bias.data.copy_(torch.rand(module.bias.shape, generator=g) * 0.4 - 0.2)
    for token in model.mask_tokens:
        token.data.copy_(torch.randn(token.shape, generator=g))
    return model


def spark_pair(arch, backend, densify_norm, decoder_width, dtype, train, seed=0):
    """(sparse-encoder SparK, masked-dense SparK) with identical weights."""
    backbone = build_model(arch, seed).to(dtype)
    torch.manual_seed(seed)
    sparse = SparK(ss.sparsify(backbone, backend=backend), decoder_width=decoder_width,
                   densify_norm=densify_norm).to(dtype)
    randomize_head(sparse, seed)
    dense = SparK(ss.MaskedDenseEncoder(backbone), decoder_width=decoder_width, densify_norm=densify_norm).to(dtype)
    dense.load_state_dict(sparse.state_dict())
    return sparse.train(train), dense.train(train)


def run(model, images, visible, seed=1234):
    images = images.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    loss, rec = model(images, visible, return_reconstruction=True)
    loss.backward()
    grads = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.double() for n, b in model.named_buffers() if b.is_floating_point()}
    return loss.detach().double(), rec.double(), grads, images.grad.double(), buffers


def flat(grads):
    return torch.cat([grads[n].flatten() for n in sorted(grads)])


CONFIGS = [  # (arch, backend, densify norm, batch, (H, W), mask ratio, train)
    ("resnet18", "torch", "auto", 2, (64, 64), 0.6, True),
    ("resnet18", "torch", "ln", 3, (96, 64), 0.5, False),
    ("resnet18", "spconv", "auto", 2, (64, 96), 0.75, True),
]


@pytest.mark.parametrize("arch,backend,norm,batch,size,ratio,train", CONFIGS)
def test_spark_sparse_equals_masked_dense(arch, backend, norm, batch, size, ratio, train):
    if backend == "spconv":
        pytest.importorskip("spconv")
    g = torch.Generator().manual_seed(7)
    images = torch.randn(batch, 3, *size, generator=g)
    visible = ss.random_visible(batch, (size[0] // 32, size[1] // 32), ratio, generator=g)
    width = 64

    runs = {}
    for dtype in (torch.float32, torch.float64):
        sparse, dense = spark_pair(arch, backend if dtype == torch.float32 else "torch", norm, width, dtype, train)
        assert sparse.encoder_kind == "sparse" and dense.encoder_kind == "masked_dense"
        assert sparse.densify_norm == ("bn" if norm == "auto" else norm)
        runs[dtype] = (run(sparse, images.to(dtype), visible), run(dense, images.to(dtype), visible))

    (s64, r64), (s32, r32) = runs[torch.float64], runs[torch.float32]
    # fp64: the same function
    assert set(s64[2]) == set(r64[2]) and len(s64[2]) == len(list(sparse.parameters()))
    worst = {"loss": rel_max(s64[0], r64[0]), "reconstruction": rel_max(s64[1], r64[1]),
             "gradients": max(rel_max(s64[2][n], r64[2][n]) for n in r64[2]),
             "input gradient": rel_max(s64[3], r64[3]),
             "buffers": max(rel_max(s64[4][n], r64[4][n]) for n in r64[4])}
    print("fp64 max-relative error: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    assert worst["loss"] <= FP64_TOL, "loss"
    assert worst["reconstruction"] <= FP64_TOL, "reconstruction"
    grad = max((rel_max(s64[2][n], r64[2][n]), n) for n in r64[2])
    assert grad[0] <= FP64_TOL, f"fp64 gradient of {grad[1]}: {grad[0]:.2e}"
    assert worst["input gradient"] <= FP64_TOL, "input gradient"
    for n in r64[4]:
        assert rel_max(s64[4][n], r64[4][n]) <= FP64_TOL, f"buffer {n}"

    # fp32 against the fp64 truth: contract tolerance + the reference's own fp32 error
    err, floor = rel_max(s32[0], r64[0]), rel_max(r32[0], r64[0])
    assert err <= 1e-5 + NOISE_FACTOR * floor, f"fp32 loss: {err:.2e} (floor {floor:.2e})"
    for n in r32[2]:
        err, floor = rel_norm(s32[2][n], r64[2][n]), rel_norm(r32[2][n], r64[2][n])
        assert err <= 1e-2 + NOISE_FACTOR * floor, f"fp32 gradient of {n}: {err:.2e} (floor {floor:.2e})"
    err, floor = rel_norm(flat(s32[2]), flat(r64[2])), rel_norm(flat(r32[2]), flat(r64[2]))
    assert err <= 5e-3 + NOISE_FACTOR * floor, f"fp32 gradient of all parameters: {err:.2e}"
    for n in r32[4]:
        err, floor = rel_max(s32[4][n], r64[4][n]), rel_max(r32[4][n], r64[4][n])
        assert err <= 1e-4 + NOISE_FACTOR * floor, f"fp32 buffer {n}: {err:.2e}"


def test_sparse_densify_builds_each_stage_map_once(monkeypatch):
    """The sparse path normalises the (N, C) rows and scatters each stage to a dense map once, with its
    mask token as the fill, channels-last: every dense map (depthwise 'dense' included) goes through
    SparseFeatures.dense, so counting its calls counts every densify copy."""
    sparse, _ = spark_pair("resnet18", "torch", "auto", 64, torch.float32, True)
    calls, scatter = [], SparseFeatures.dense

    def counted(self, fill=None, memory_format=torch.contiguous_format):
        calls.append((self.stride, fill is not None, memory_format))
        return scatter(self, fill, memory_format)

    monkeypatch.setattr(SparseFeatures, "dense", counted)
    images = torch.randn(2, 3, 64, 64)
    sparse(images, ss.random_visible(2, (2, 2), 0.5, generator=torch.Generator().manual_seed(0)))
    assert sorted(calls) == [(s, True, torch.channels_last) for s in (4, 8, 16, 32)]


def test_dense_head_runs_channels_last():
    """Densify builds channels-last maps; the head's convs take them as they are, and their
    weights (and so their gradients) stay channels-last through a training step and a reload."""
    model, _ = spark_pair("resnet18", "torch", "auto", 64, torch.float32, True)
    convs = [m for m in list(model.decoder.modules()) + list(model.densify_projs.modules())
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0])) for m in convs]
    loss = model(torch.randn(2, 3, 64, 64), ss.random_visible(2, (2, 2), 0.5))
    loss.backward()
    for h in hooks:
        h.remove()
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    for m in convs:
        assert m.weight.is_contiguous(memory_format=torch.channels_last), m
        assert m.weight.grad.is_contiguous(memory_format=torch.channels_last), m
    again, _ = spark_pair("resnet18", "torch", "auto", 64, torch.float32, True)
    again.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in again.decoder.modules()
               if isinstance(m, nn.Conv2d))


def test_masked_pixels_are_never_read_by_the_encoder_but_are_the_target():
    sparse, _ = spark_pair("resnet18", "torch", "auto", 64, torch.float32, False)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 64, 96, generator=g)
    visible = ss.random_visible(2, (2, 3), 0.5, generator=g)
    changed = torch.where(ss.masks.dense_mask(visible, 1, 32), images, torch.randn(images.shape, generator=g))
    with torch.no_grad():
        rec_a = sparse.decoder(sparse.densify(images, visible))
        rec_b = sparse.decoder(sparse.densify(changed, visible))
        assert torch.equal(rec_a, rec_b)
        assert not torch.allclose(sparse.loss(images, rec_a, visible), sparse.loss(changed, rec_b, visible))


def test_loss_is_mse_to_normalised_masked_patches():
    """The loss against a direct per-patch computation (unbiased variance, masked patches only)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    rec = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    visible = torch.tensor([[[True, False], [False, False]], [[False, True], [True, False]]])
    sparse, _ = spark_pair("resnet18", "torch", "auto", 64, torch.float64, False)
    total, count = 0.0, 0
    for b in range(2):
        for py in range(2):
            for px in range(2):
                if visible[b, py, px]:
                    continue
                patch = images[b, :, py * 32:(py + 1) * 32, px * 32:(px + 1) * 32]
                target = (patch - patch.mean()) / (patch.var(unbiased=True) + 1e-6).sqrt()
                total += float((rec[b, :, py * 32:(py + 1) * 32, px * 32:(px + 1) * 32] - target).square().mean())
                count += 1
    assert abs(float(sparse.loss(images, rec, visible)) - total / count) < 1e-10
    assert torch.equal(unpatchify(patchify(images, 32), 32, (2, 2)), images)
    pasted = paste_visible(images, rec, visible)
    assert torch.equal(pasted[0, :, :32, :32], images[0, :, :32, :32])
    assert torch.equal(pasted[0, :, 32:, :32], rec[0, :, 32:, :32])


def test_head_structure_follows_spark():
    sparse, _ = spark_pair("resnet18", "torch", "auto", 768, torch.float32, True)
    assert sparse.decoder.widths == (768, 384, 192, 96, 48)
    assert [tuple(t.shape) for t in sparse.mask_tokens] == [(1, 512, 1, 1), (1, 256, 1, 1), (1, 128, 1, 1),
                                                             (1, 64, 1, 1)]
    kernels = [p.kernel_size for p in sparse.densify_projs]
    assert kernels == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [p.out_channels for p in sparse.densify_projs] == [768, 384, 192, 96]
    # widths that agree at the deepest stage: identity; the encoder keys stay timm's
    model = SparK(ss.sparsify(build_model("resnet18")), decoder_width=512)
    assert isinstance(model.densify_projs[0], nn.Identity)
    timm_keys = {k for k in build_model("resnet18").state_dict() if not k.startswith("fc.")}
    assert {k[len("encoder."):] for k in model.state_dict() if k.startswith("encoder.")} == timm_keys
    with pytest.raises(ValueError, match="densify_norm"):
        SparK(ss.sparsify(build_model("resnet18")), densify_norm="group")
