"""Environments for the subprocesses that tests start."""
import os
import pathlib
import subprocess
import sys


def single_device_env() -> dict[str, str]:
  """os.environ minus conftest's 8 fake CPU devices: a tiny model compiles and
  trains ~2x faster on one device, and its checkpoint restores on any count."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  return env


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
  """`python -m module args...` from the repository root on one CPU device."""
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                        text=True, cwd=REPO_ROOT, env=single_device_env(), check=False,
                        timeout=timeout)


def train_smoke(workdir, data_dir, config: str) -> None:
  """Trains `--config=experiments/<config>` into workdir; fails with its stderr."""
  proc = run_module("hrm_jax.main", f"--config=experiments/{config}", f"--workdir={workdir}",
                    f"--config.data.data_dir={data_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
