"""OpenMP's wait between parallel regions: with --shared-cpu the command line asks libgomp for a short
spin before torch loads; without it, or where the user set a wait policy, it changes nothing; it says
what was chosen. The end-to-end cases run in their own process, since libgomp reads its setting once,
when torch loads."""
import os
import subprocess
import sys

import pytest

from spark_sparse import openmp
from spark_sparse.openmp import POLICY_VARIABLE, SHORT_SPIN, SPIN_VARIABLE, choose_spin
from tests.pretrain_utils import REPO, env


def test_a_shared_cpu_gets_a_short_spin_before_torch_loads():
    environ = {}
    line = choose_spin(True, environ, torch_loaded=False)
    assert environ == {SPIN_VARIABLE: SHORT_SPIN} and f"{SPIN_VARIABLE}={SHORT_SPIN}" in line


def test_without_shared_cpu_nothing_is_set():
    environ = {}
    assert choose_spin(False, environ, torch_loaded=False) == "libgomp's default spin" and environ == {}


@pytest.mark.parametrize("users", [{POLICY_VARIABLE: "ACTIVE"}, {SPIN_VARIABLE: "300000"},
                                   {POLICY_VARIABLE: "PASSIVE", SPIN_VARIABLE: "0"}])
def test_a_wait_policy_the_user_set_is_kept(users):
    environ = dict(users)
    line = choose_spin(True, environ, torch_loaded=False)
    assert environ == users and all(f"{k}={v}" in line for k, v in users.items()) and "environment" in line


def test_an_empty_variable_is_no_choice():
    environ = {POLICY_VARIABLE: ""}
    choose_spin(True, environ, torch_loaded=False)
    assert environ[SPIN_VARIABLE] == SHORT_SPIN


def test_nothing_is_set_once_torch_is_loaded_and_a_warning_says_so():
    environ = {}
    with pytest.warns(UserWarning, match="no effect"):
        line = choose_spin(True, environ, torch_loaded=True)
    assert environ == {} and "default" in line and "loaded" in line


def test_the_process_decides_once_and_reports_that(monkeypatch):
    """The command line decides; the trainer, asking again, reports the same decision (here torch is
    loaded, so --shared-cpu can only warn)."""
    monkeypatch.setattr(openmp, "_decided", None)
    for name in (POLICY_VARIABLE, SPIN_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    with pytest.warns(UserWarning, match="no effect"):
        first = choose_spin(True)
    assert choose_spin(False) == first == openmp.wait_policy() and SPIN_VARIABLE not in os.environ


# A command stands in for pretrain: like every command it loads torch in its run(); it reports the
# variable torch loaded with, and the CPU time the process used while its main thread slept just after
# a parallel region (an idle OpenMP thread spinning through the sleep uses it).
PROBE = """
import os, sys, time
import spark_sparse.cli as cli  # not "from spark_sparse import cli", which loads the models (and torch)
import spark_sparse.commands.pretrain as pretrain

def run(args):
    import torch
    torch.set_num_threads(2)
    x = torch.randn(2048, 2048)
    for _ in range(3):
        x = (x @ x).clamp_(-1, 1)
    start = time.process_time()
    time.sleep(0.5)
    print("SPIN", os.environ.get("GOMP_SPINCOUNT"), "IDLE_CPU", time.process_time() - start)
    return 0

pretrain.run = run
sys.exit(cli.main(["pretrain", *sys.argv[1:]]))
"""


def probe(*argv, **variables):
    e = {k: v for k, v in env(threads=2).items() if k not in (POLICY_VARIABLE, SPIN_VARIABLE)}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, env=dict(e, **variables), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    _, spin, _, idle = out.stdout.split()
    return spin, float(idle)


def test_shared_cpu_sets_the_spin_before_a_command_loads_torch():
    assert probe()[0] == "None"
    assert probe("--shared-cpu")[0] == SHORT_SPIN


@pytest.mark.skipif("ATen parallel backend: OpenMP" not in __import__("torch").__config__.parallel_info(),
                    reason="torch here does not run its CPU kernels on OpenMP")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="libgomp shortens its spin when it has more threads than CPUs")
def test_a_spin_the_user_set_reaches_libgomp():
    """--shared-cpu keeps the user's setting, and torch's OpenMP (libgomp) reads it: a spin of ten
    billion keeps the idle thread busy through the sleep (so the short spin reaches libgomp too)."""
    spin, idle = probe("--shared-cpu", GOMP_SPINCOUNT="10000000000")
    assert spin == "10000000000"
    assert idle > 0.15, f"an idle OpenMP thread used only {idle:.2f} s of CPU during a 0.5 s sleep"
