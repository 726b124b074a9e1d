"""``spark-sparse demo``: checks a sparse encoder against the reference, or refuses bad options in one line."""
import re

import pytest

from spark_sparse.cli import main


def test_demo_reports_agreement_and_the_mac_ratio(capsys):
    assert main(["demo", "--arch", "resnet18", "--size", "64", "96", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    stage_errors = [float(m) for m in re.findall(r"^\s+\d\s+\d+\s+\d+\s+(\S+)$", out, flags=re.M)]
    assert len(stage_errors) == 4 and max(stage_errors) < 1e-4  # fp32 against the masked-dense reference
    assert re.search(r"encoder MACs: sparse [\d.]+ G, masked-dense [\d.]+ G, ratio [\d.]+x", out)


@pytest.mark.parametrize("options,message", [
    (["--mask-ratio", "1.0"], "--mask-ratio must be in [0, 1)"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--seed", "-1"], "--seed must be in 0 … 4294967295"),
    (["--size", "100"], "not a multiple of 32"),
    (["--size", "64", "64", "64"], "--size takes S or H W"),
    (["--device", "tpu"], "--device 'tpu': not a device name"),
    (["--arch", "vit_small_patch16_224"], "expected stages at strides (4, 8, 16, 32)"),
])
def test_demo_refuses_bad_options_without_a_traceback(capsys, options, message):
    assert main(["demo", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spark-sparse demo: ") and message in err and "Traceback" not in err
