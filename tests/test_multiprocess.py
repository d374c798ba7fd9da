"""Two JAX processes on one machine through the real entry point, as on a pod.

`python -m hrm_jax.main --distributed=on --num_processes=2 --process_id=i
--jax_num_cpu_devices=2` twice in parallel (gloo collectives over localhost, 4 global
devices) trains the Sudoku smoke config into ONE shared workdir, as all
processes of a multi-host run must. A third, single-process run with 4 CPU
devices trains the same config for reference. Checked:

* both processes finish and agree (same eval lines, one checkpoint);
* the two-process parameters equal the single-process ones, and so do the
  per-step training losses: each process fed its own half of every global
  batch (a wrong process slice in the sampler would change them);
* if the trainer logs a per-process parameter checksum ("params checksum"),
  both processes logged the same one.

Every subprocess has a timeout, so a hung collective fails the test.
"""
import os
import re
import socket
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

from experiments import sudoku


def _free_port() -> int:
  """A port the OS just handed out (the coordinator binds it right after)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]
from hrm_jax import checkpoint, data, metric_writers, models, sharding, steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
CHECKSUM = re.compile(r"params checksum[^:]*:\s*(\S+)")


def _config(data_dir):
  config = sudoku.get_config("smoke")
  config.data.data_dir = str(data_dir)
  return config


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 8 devices; --jax_num_cpu_devices decides here
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _start(args, log_path):
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  command = [sys.executable, "-m", "hrm_jax.main",
             "--config=experiments/sudoku.py:smoke", *args]
  return subprocess.Popen(command, cwd=REPO, env=_env(), stdout=log,
                          stderr=subprocess.STDOUT), log


def _wait_all(procs, deadline):
  for proc, log, path in procs:
    try:
      proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      for other, _, _ in procs:
        if other.poll() is None:
          other.kill()
      pytest.fail(f"{path} did not finish within {TIMEOUT_S} s (hung collective?):\n"
                  + _tail(path))
    finally:
      log.close()
  for proc, _, path in procs:
    assert proc.returncode == 0, f"{path} exited {proc.returncode}:\n{_tail(path)}"


def _tail(path, lines=40):
  with open(path) as f:
    return "".join(f.readlines()[-lines:])


def _restore(workdir, config, metadata):
  """(step, host state) of the newest checkpoint, onto this process's device 0."""
  model_cfg = models.make_config(config.model, metadata)
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  program = steps.build_train_step(model_cfg, config.opt, config.total_steps,
                                   config.batch_size, mesh)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=config.ckpt.every_steps)
  try:
    step, state, _, _ = ckpt.restore_latest(program.abstract_state)
  finally:
    ckpt.close()
  return step, jax.device_get(state)


def _train_losses(workdir):
  return {r["step"]: r["train/loss"] for r in metric_writers.read_jsonl_metrics(workdir)
          if "train/loss" in r}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  config = _config(tmp_path / "data")
  # Built once here, so the three runs only read it (no race on the build).
  metadata = data.load(config.data, "train").metadata
  data.load(config.data, "test")
  shared = str(tmp_path / "two_process")
  single = str(tmp_path / "one_process")
  common = [f"--config.data.data_dir={config.data.data_dir}"]
  port = _free_port()

  start = time.monotonic()
  procs = []
  for i in range(2):
    path = str(tmp_path / f"process_{i}.log")
    proc, log = _start([f"--workdir={shared}", "--distributed=on",
                        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                        f"--process_id={i}", "--jax_num_cpu_devices=2", *common], path)
    procs.append((proc, log, path))
  path = str(tmp_path / "reference.log")
  proc, log = _start([f"--workdir={single}", "--distributed=off", "--jax_num_cpu_devices=4",
                      *common], path)
  procs.append((proc, log, path))
  _wait_all(procs, start + TIMEOUT_S)
  print(f"two-process + reference runs: {time.monotonic() - start:.1f} s wall")

  logs = [open(p).read() for _, _, p in procs[:2]]  # pylint: disable=consider-using-with
  for i, text in enumerate(logs):
    assert f"process {i} of 2, 2 local / 4 global devices" in text, text[-2000:]
  evals = [re.findall(r"eval at step \d+ \([^)]*\): (.*)", text) for text in logs]
  assert evals[0] and evals[0] == evals[1], evals

  step, two = _restore(shared, config, metadata)
  ref_step, one = _restore(single, config, metadata)
  assert step == ref_step == config.total_steps
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  losses, ref_losses = _train_losses(shared), _train_losses(single)
  assert sorted(losses) == list(range(1, config.total_steps + 1))
  for s, loss in losses.items():
    np.testing.assert_allclose(loss, ref_losses[s], rtol=1e-5)

  checksums = [CHECKSUM.findall(text) for text in logs]
  if all(checksums):
    assert checksums[0][-1] == checksums[1][-1], checksums
  else:
    warnings.warn("The trainer logs no per-process 'params checksum'; only the shared "
                  "checkpoint and the logs' eval lines were compared.")
