"""What every command shares in its messages: the lower-bound check (refusals worded alike) and the
package's warnings printed as log lines."""
import math

import pytest

from spark_sparse.checks import at_least


def test_a_value_at_or_above_the_bound_passes_and_none_is_a_default():
    assert at_least(1, "--batch") == 1
    assert at_least(0, "--warmup", 0) == 0
    assert at_least(None, "--threads") is None


@pytest.mark.parametrize("value", [0, -3, math.nan])
def test_a_value_below_the_bound_or_nan_is_refused_by_name(value):
    with pytest.raises(ValueError, match=r"--log-every must be >= 1, got"):
        at_least(value, "--log-every")


def test_the_refusal_says_what_the_bound_means():
    with pytest.raises(ValueError, match=r"--ckpt-every must be >= 0 \(0: off\), got -1"):
        at_least(-1, "--ckpt-every", 0, "0: off")


def test_train_bench_and_commands_share_it(tmp_path, capsys):
    """A negative count is refused in the same words by the trainer's, bench's and a command's checks."""
    from spark_sparse.benchmarks.config import BenchConfig
    from spark_sparse.cli import main
    from spark_sparse.train.config import check_args, defaults

    args = defaults()
    args.out, args.log_every = str(tmp_path / "run"), 0
    with pytest.raises(ValueError, match=r"^--log-every must be >= 1, got 0$"):
        check_args(args)
    with pytest.raises(ValueError, match=r"^--repeats must be >= 1, got 0$"):
        BenchConfig(repeats=0).validate()
    assert main(["demo", "--batch", "0"]) == 2
    assert "--batch must be >= 1, got 0" in capsys.readouterr().err


def test_the_command_line_prints_the_packages_warnings_as_log_lines(monkeypatch):
    """One 'WARNING: …' line like the trainer's for the package's own warnings; others keep Python's form."""
    import warnings

    from spark_sparse import cli
    from spark_sparse.routing import cache
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    cli.own_warnings_as_log_lines()
    assert warnings.formatwarning("cache ignored", RuntimeWarning, cache.__file__, 48) == "WARNING: cache ignored\n"
    foreign = warnings.formatwarning("deprecated", UserWarning, math.__file__ if hasattr(math, "__file__")
                                     else "/usr/lib/python3/somewhere.py", 3)
    assert foreign.startswith("/") and "UserWarning: deprecated" in foreign
