"""benchmarks/loss_curves.py's summary: per run, the median img/s over the steps after the first (the
first pays one-time costs) and the largest loss difference to the first run, step by step."""
import json
import re

import pytest

from spark_sparse.benchmarks import loss_curves

# step 1 is slow (compilation, first allocations): a mean or a median over all steps would show it
A = [dict(step=1, loss=1.00, img_per_s=1.0), dict(step=2, loss=0.90, img_per_s=10.0),
     dict(step=3, loss=0.80, img_per_s=30.0), dict(step=4, loss=0.70, img_per_s=20.0),
     dict(step=5, loss=0.60, img_per_s=1000.0)]
# the largest difference sits at step 3 (0.25), not at the last step or between the last losses (0.05)
B = [dict(step=1, loss=1.00, img_per_s=2.0), dict(step=2, loss=0.95, img_per_s=50.0),
     dict(step=3, loss=0.55, img_per_s=40.0), dict(step=4, loss=0.68, img_per_s=60.0),
     dict(step=5, loss=0.65, img_per_s=45.0)]


def write_run(folder, records):
    folder.mkdir()
    with open(folder / "metrics.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({**r, "lr": 1e-3, "wd": 0.04}) + "\n")
        f.write("\n")
    return str(folder)


def parse(line):
    m = re.match(r"(\w+): (\d+) steps, median ([\d.]+) img/s after step 1, last loss ([\d.]+), "
                 r"max \|loss - (\w+)\| ([\d.]+)$", line)
    assert m, line
    label, steps, speed, last, first, diff = m.groups()
    return label, int(steps), float(speed), float(last), first, float(diff)


def test_summary_from_two_metrics_files(tmp_path, capsys):
    a, b = write_run(tmp_path / "a", A), write_run(tmp_path / "b", B)
    assert loss_curves.read_metrics(a)[1]["img_per_s"] == 10.0 and len(loss_curves.read_metrics(a)) == 5
    assert loss_curves.main([f"dense={a}", f"sparse={b}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    dense, sparse = parse(lines[0]), parse(lines[1])
    # median of 10, 30, 20, 1000 (steps 2–5) = 25; of 50, 40, 60, 45 = 47.5
    assert dense == ("dense", 5, pytest.approx(25.0), pytest.approx(0.6), "dense", 0.0)
    assert sparse == ("sparse", 5, pytest.approx(47.5), pytest.approx(0.65), "dense", pytest.approx(0.25))


def test_summary_matches_steps_not_positions():
    """A run that logged fewer steps is compared at the steps both have."""
    later = [r for r in B if r["step"] in (1, 2, 4, 5)]  # step 3 missing: its 0.25 is not seen
    lines = loss_curves.summary({"a": A, "b": later})
    label, steps, speed, _, _, diff = parse(lines[1])
    assert steps == 4 and diff == pytest.approx(0.05)  # |0.65 - 0.60| at step 5, not 0.68 vs 0.80
    assert speed == pytest.approx(50.0)  # median of 50, 60, 45


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = loss_curves.plot({"a": A, "b": B}, str(tmp_path / "curves.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_argument_is_refused(capsys):
    assert loss_curves.main(["no-equals-sign"]) == 2
    assert "LABEL=RUN_DIR" in capsys.readouterr().err
