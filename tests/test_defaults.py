"""One source for each default: the trainer, the model, the schedule and the command line agree, and
the command line starts without loading torch."""
import argparse
import inspect
import subprocess
import sys

import pytest

from spark_sparse import recipe
from tests.pretrain_utils import REPO, env, parse


def test_with_defaults_fills_every_option_from_the_command_line():
    from spark_sparse.train.config import with_defaults
    mine = argparse.Namespace(arch="resnet10t", data_timeout=5.0)
    filled = with_defaults(mine)
    expected = vars(parse(["--arch", "resnet10t", "--data-timeout", "5"]))
    expected.pop("command"), expected.pop("_run")
    assert vars(filled) == expected
    assert vars(mine) == {"arch": "resnet10t", "data_timeout": 5.0}  # the caller's object is left alone
    with pytest.raises(ValueError, match="unknown pretrain option.*mask_ration"):
        with_defaults(argparse.Namespace(mask_ration=0.9))  # would train at the default 0.6, silently


def test_a_trainer_built_from_a_minimal_namespace_gets_the_cli_defaults(tmp_path):
    from spark_sparse.train.trainer import Trainer
    minimal = dict(arch="resnet10t", input_size=64, batch_size=4, decoder_width=32, workers=0, amp="off",
                   progress=False, out=str(tmp_path / "run"))
    trainer = Trainer(argparse.Namespace(**minimal))
    try:
        cli = parse(["--arch", "resnet10t", "--input-size", "64", "--batch-size", "4", "--decoder-width", "32",
                     "--workers", "0", "--amp", "off", "--no-progress", "--out", str(tmp_path / "run")])
        for key, value in vars(cli).items():
            if key not in ("command", "_run"):
                assert getattr(trainer.args, key) == value, key
        assert trainer.args.data_timeout == 600  # an API caller's data loader times out as the command line's
        assert trainer.model.mask_ratio == recipe.MASK_RATIO and trainer.schedule.wd == recipe.WEIGHT_DECAY
    finally:
        trainer.close()


def test_model_schedule_and_command_line_share_the_recipe():
    from spark_sparse.spark import SparK, build_spark
    from spark_sparse.train.schedule import Schedule
    for fn in (SparK, build_spark):
        params = inspect.signature(fn).parameters
        assert params["mask_ratio"].default == recipe.MASK_RATIO
        assert params["decoder_width"].default == recipe.DECODER_WIDTH
    assert (Schedule(1.0, 0, 10).wd, Schedule(1.0, 0, 10).wd_end) == (recipe.WEIGHT_DECAY, recipe.WEIGHT_DECAY_END)
    args = parse([])
    assert (args.mask_ratio, args.decoder_width, args.wd, args.wd_end, args.base_lr, args.clip) == (
        recipe.MASK_RATIO, recipe.DECODER_WIDTH, recipe.WEIGHT_DECAY, recipe.WEIGHT_DECAY_END, recipe.BASE_LR,
        recipe.CLIP)


def test_the_model_takes_one_spelling_of_the_encoder_kind_and_the_cli_its_own():
    from spark_sparse.spark import ENCODER_KINDS, build_spark
    from spark_sparse.train.config import ENCODER_KINDS as OPTION
    assert set(OPTION.values()) == set(ENCODER_KINDS) and "masked-dense" in OPTION
    with pytest.raises(ValueError, match="encoder_kind must be one of"):
        build_spark("resnet18", encoder_kind="masked-dense")


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["demo", "--batch", "x"], ["nosuchcommand"],
                                  ["pretrain", "--help"], ["pretrain", "--nosuch"], ["import", "--help"],
                                  ["export", "--help"], ["reconstruct", "--help"], ["bench", "--help"],
                                  ["bench", "--modes", "nosuch"]])
def test_the_command_line_answers_without_importing_torch(argv):
    code = ("import sys\nfrom spark_sparse.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_the_package_loads_its_public_names_on_first_use():
    code = ("import sys, spark_sparse as ss\nassert 'torch' not in sys.modules\n"
            "assert ss.geometry.Geometry  # a submodule as an attribute, not imported before\n"
            "ss.sparsify\n"
            "assert 'timm' in ss.supported_layers(), 'the timm families are not registered'\n"
            "print('OK', ss.__version__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
