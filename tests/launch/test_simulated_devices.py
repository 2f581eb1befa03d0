"""The README's commands as typed: with no XLA_FLAGS, a CLI whose layout needs 8 devices asks
XLA's CPU backend for them itself, and says so."""

import os
import subprocess
import sys

from tests.train.runner_helpers import REPO, STAGE1


def clean_env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    return env


def test_simulate_cpu_devices_before_jax_starts():
    code = ("from a1jax import devices; import jax; assert devices.simulate_cpu_devices(4); "
            "print(jax.device_count()); assert not devices.simulate_cpu_devices(8)")
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["simulating 4 CPU devices for the layout "
                                "(--xla_force_host_platform_device_count=4)", "4"]


def test_train_as_the_readme_types_it(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "a1jax.train", "--config", f"{STAGE1}:model=tiny,smoke=True",
         "--workdir", str(tmp_path / "stage1"), "--config.steps=1", "--config.eval_every=1"],
        env=clean_env(), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("simulating 8 CPU devices for the layout "
                                 "(--xla_force_host_platform_device_count=8)\n")
    assert "mesh data=2 x expert=2 x sequence=2" in out.stdout
