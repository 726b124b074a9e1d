"""spark-sparse export: the encoder out as a timm state dict, loaded by timm, verified against the sparse
encoder; a corrupted export fails verification."""
import pytest
import timm
import torch

from tests.export_utils import cli, encoder_state, trained_spark, write_checkpoint
from spark_sparse import export as ex
from spark_sparse.weights import head_keys, read_file

HEADS = {"resnet18": ["fc.weight", "fc.bias"],
         "convnext_atto": ["head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch → (sparse encoder state, checkpoint path) of a SparK model after two train-mode passes."""
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for arch in ("resnet18", "convnext_atto"):
        model = trained_spark(arch)
        out[arch] = encoder_state(model), write_checkpoint(model, arch, str(folder / f"{arch}.pt"))
    return out


@pytest.mark.parametrize("arch", ["resnet18", "convnext_atto"])
def test_dense_to_sparse_to_timm_round_trip_and_verify(arch, tmp_path, checkpoints):
    sparse_state, path = checkpoints[arch]
    if arch == "resnet18":  # the running statistics are the sparse encoder's, not the dense initial ones
        fresh = timm.create_model(arch).state_dict()
        assert not torch.equal(sparse_state["bn1.running_mean"], fresh["bn1.running_mean"])
        assert int(sparse_state["bn1.num_batches_tracked"]) == 2

    rc, out, err = cli("export", path, "--out", tmp_path / "enc.safetensors", "--verify")
    assert rc == 0, out + err
    assert "verify passed" in out and len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 4
    rc, out, err = cli("export", path, "--out", tmp_path / "enc.pth")
    assert rc == 0, out + err

    assert head_keys(arch) == HEADS[arch]
    for name in ("enc.safetensors", "enc.pth"):
        file = str(tmp_path / name)
        state, _ = read_file(file)
        assert set(state) == set(sparse_state)
        dense = timm.create_model(arch, num_classes=7)
        result = dense.load_state_dict(state, strict=False)
        assert sorted(result.missing_keys) == sorted(HEADS[arch]) and not result.unexpected_keys
        via_timm = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=file), num_classes=7)
        for loaded in (dense.state_dict(), via_timm.state_dict()):
            for key, value in sparse_state.items():
                assert torch.equal(loaded[key], value), f"{name}: {key} differs after the round trip"


def test_verify_fails_on_a_corrupted_export(tmp_path, monkeypatch, checkpoints):
    _, path = checkpoints["resnet18"]

    # through the command: the written file is off by a small amount in one convolution
    real = ex.timm_state

    def corrupted(payload, source):
        state = real(payload, source)
        state["layer2.0.conv1.weight"] += 0.01 * torch.randn_like(state["layer2.0.conv1.weight"])
        return state

    monkeypatch.setattr(ex, "timm_state", corrupted)
    rc, out, err = cli("export", path, "--out", tmp_path / "bad.safetensors", "--verify")
    assert rc == 1, out + err
    assert "verify FAILED" in err and "> tolerance" in out
    monkeypatch.undo()

    # directly: a good export whose BatchNorm running variance is then edited in the file
    from safetensors.torch import save_file
    good = str(tmp_path / "good.safetensors")
    assert cli("export", path, "--out", good)[0] == 0
    payload = torch.load(path, weights_only=True)
    state, meta = read_file(good)
    state["layer3.1.bn2.running_var"] = state["layer3.1.bn2.running_var"] * 1.5
    save_file(state, good, metadata=meta)
    errors = ex.verify(payload, path, good)
    assert errors[0].error < 1e-5 and errors[1].error < 1e-5, "stages before the edit still agree"
    assert errors[2].error > 1e-3 and errors[3].error > 1e-3
