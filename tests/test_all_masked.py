"""A batch in which no image keeps a visible patch runs as in SparK's official code, on every backend and
dtype: the encoder's gradients are exactly zero, its BatchNorm running statistics untouched, the
decoder and the mask tokens still learn, nothing is NaN — for the sparse encoder and the masked-dense
reference alike. Batches where only some images have no visible patch stay exactly equivalent."""
import pytest
import torch

from spark_sparse.spark import build_spark

ARCHS = ("resnet10t", "convnext_atto")
ENCODERS = [("sparse", "torch"), ("sparse", "gather-conv"), ("sparse", "tiles"), ("sparse", "spconv"),
            ("masked_dense", "auto")]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


def step(arch, kind, backend, dtype, visible, seed=0):
    torch.manual_seed(seed)
    model = build_spark(arch, encoder_kind=kind, backend=backend, decoder_width=32).train()
    if dtype == torch.float64:
        model = model.double()
    images = torch.randn(visible.shape[0], 3, 64, 64, generator=torch.Generator().manual_seed(seed + 1),
                         dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = model(images, visible)
    loss.backward()
    return model, loss, before


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind,backend", ENCODERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_a_batch_without_any_visible_patch(arch, kind, backend, dtype):
    visible = torch.zeros(2, 2, 2, dtype=torch.bool)
    model, loss, before = step(arch, kind, backend, DTYPES[dtype], visible)
    assert torch.isfinite(loss)
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and not p.grad.any(), f"encoder gradient {name} must be exactly zero"
    for name, value in model.encoder.state_dict().items():
        if "running_" in name:
            assert torch.equal(value, before[name]), f"{name} must be untouched"
    rest = {n: p.grad for n, p in model.named_parameters() if not n.startswith("encoder.")}
    assert all(g is None or torch.isfinite(g).all() for g in rest.values())
    assert all(rest[n].abs().sum() > 0 for n in rest if "mask_token" in n), "mask tokens learn"
    assert any(rest[n].abs().sum() > 0 for n in rest if n.startswith("decoder.")), "the decoder learns"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("visible", [[[0, 0], [0, 0]], [[1, 0], [0, 1]]], ids=["none-visible", "some-visible"])
def test_sparse_equals_masked_dense_when_images_have_no_visible_patch(arch, visible):
    """fp64: loss, every gradient and every buffer agree (image 0 fully masked, image 1 as given)."""
    mask = torch.tensor([[[0, 0], [0, 0]], visible], dtype=torch.bool)
    sparse, loss_s, _ = step(arch, "sparse", "torch", torch.float64, mask)
    dense, loss_d, _ = step(arch, "masked_dense", "auto", torch.float64, mask)
    assert abs(float(loss_s.detach() - loss_d.detach())) <= 1e-12
    grads_d = dict(dense.named_parameters())
    for name, p in sparse.named_parameters():
        g, h = p.grad, grads_d[name].grad
        if g is None or h is None:
            assert (g is None or not g.any()) and (h is None or not h.any()), name
            continue
        assert float((g - h).abs().max()) <= 1e-12 * max(1.0, float(h.abs().max())), name
    buffers_d = dict(dense.named_buffers())
    for name, b in sparse.named_buffers():
        assert torch.allclose(b.double(), buffers_d[name].double(), rtol=0, atol=1e-12), name
