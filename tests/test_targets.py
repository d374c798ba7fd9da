"""`compile_check --target`: accelerator compilers on a CPU (launch/targets.py).

Without the optional extras (CI) the plumbing is checked: target names, memory
per device, the one-line error naming the install command, attention resolving
for a platform given explicitly, the fake-CPU path saying its memory is the
CPU's. Tests marked `aot` compile a smoke config with XLA's GPU compiler (H100,
T4) and TPU compiler (a v5e slice); they run only where the extras are
installed (`pip install -e ".[aot-gpu]" ".[aot-tpu]"`, then pytest -m aot).
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import jax.numpy as jnp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hrm_jax.models import layers  # pylint: disable=wrong-import-position
from launch import targets  # pylint: disable=wrong-import-position


def _has(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    return False


HAS_GPU_COMPILER = _has("jax_plugins.xla_cuda12")
HAS_TPU_COMPILER = _has("libtpu")


def _compile_check(*args):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 8 fake devices are not the script's
  env.pop("JAX_PLATFORMS", None)
  return subprocess.run([sys.executable, str(REPO / "launch/compile_check.py"), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _last_json(result):
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_target_names():
  h100 = targets.parse("H100")
  assert h100.platform == "cuda" and h100.gpu.compute_capability == (9, 0)
  assert h100.usable_fraction == 0.75 and h100.attention_platform == "gpu"
  assert h100.memory_per_device([]) == 81559 * 2 ** 20
  assert set(targets.GPUS) >= {"h100", "h200", "a100-80gb", "l40s", "t4"}
  assert not targets.parse("t4").gpu.flash_attention  # sm75: no cuDNN flash attention
  assert targets.parse("l40s").gpu.flash_attention
  v5e = targets.parse("tpu:v5e:16x16")
  assert (v5e.platform, v5e.tpu_topology, v5e.generation) == ("tpu", "v5e:16x16", "v5e")
  assert v5e.usable_fraction == 1.0 and v5e.attention_platform == "tpu"
  assert targets.parse("tpu:v4-8").tpu_topology == "v4-8"
  assert targets.parse("tpu:v6e:2x2").bf16_tflops() == 918.0
  # HBM per device: the chip's over the devices libtpu makes of it.
  one_per_chip = [types.SimpleNamespace(id=i, coords=(i, 0, 0)) for i in range(4)]
  two_per_chip = [types.SimpleNamespace(id=i, coords=(i // 2, 0, 0)) for i in range(8)]
  assert v5e.memory_per_device(one_per_chip) == 16 * 2 ** 30
  assert targets.parse("tpu:v4-8").memory_per_device(two_per_chip) == 16 * 2 ** 30
  for bad in ("h800", "tpu:v3:2x2", "tpu:v5e"):
    with pytest.raises(ValueError, match="--target"):
      targets.parse(bad)


def test_missing_compiler_is_one_line_naming_the_extra(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  for name, extra in (("h100", '".[aot-gpu]"'), ("tpu:v5e:4x4", '".[aot-tpu]"')):
    with pytest.raises(targets.TargetUnavailable) as error:
      targets.check_installed(targets.parse(name))
    message = str(error.value)
    assert f"pip install -e {extra}" in message and "\n" not in message, message


@pytest.mark.skipif(HAS_GPU_COMPILER and HAS_TPU_COMPILER,
                    reason="the extras are installed here: the aot tests compile instead")
def test_compile_check_without_the_extra_fails_in_one_line():
  target = "tpu:v5e:4x4" if HAS_GPU_COMPILER else "h100"
  extra = "aot-tpu" if HAS_GPU_COMPILER else "aot-gpu"
  result = _compile_check("--config=experiments/maze.py:smoke", f"--target={target}")
  assert result.returncode == 1, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and f'pip install -e ".[{extra}]"' in lines[0], result.stderr


def test_compile_check_unknown_target_names_the_choices():
  result = _compile_check("--config=experiments/maze.py:smoke", "--target=h800")
  assert result.returncode != 0 and "h100" in result.stderr and "tpu:v5e:4x4" in result.stderr


def test_attention_resolves_for_the_given_platform():
  """An explicit platform (or the `attention_platform` block) decides; without
  either the backend does, as before (CPU here: dense)."""
  assert layers.resolve_attention_impl("auto", jnp.bfloat16, "gpu") == "cudnn"
  assert layers.resolve_attention_impl("auto", jnp.float32, "gpu") == "xla"
  assert layers.resolve_attention_impl("auto", jnp.bfloat16, "tpu") == "xla"
  assert layers.resolve_attention_impl("cudnn", jnp.bfloat16, "gpu") == "cudnn"
  with pytest.raises(ValueError, match="platform 'tpu'"):
    layers.resolve_attention_impl("cudnn", jnp.bfloat16, "tpu")
  with layers.attention_platform("gpu"):
    assert layers.resolve_attention_impl("auto", jnp.bfloat16) == "cudnn"
    assert layers.resolve_attention_impl("auto", jnp.bfloat16, "cpu") == "xla"
  assert layers.resolve_attention_impl("auto", jnp.bfloat16) == "xla"


def test_fake_cpu_mode_says_its_memory_is_the_cpus():
  result = _compile_check("--config=experiments/maze.py:smoke", "--mesh=data:2")
  out = _last_json(result)
  assert out["target"] == "cpu" and out["compiler"] == "XLA:CPU"
  assert out["devices"] == 2 and out["fits"] is None and out["peak_bytes"] > 0
  assert "not an accelerator's" in result.stdout
  tight = _last_json(_compile_check("--config=experiments/maze.py:smoke", "--mesh=data:1",
                                    "--device_memory=1MiB", "--remat_options=none"))
  assert tight["fits"] is False and tight["pick"] is None


# ---- With the extras: the accelerators' own compilers.

_BF16_SMOKE = ("--config=experiments/maze.py:smoke", "--config.model.forward_dtype=bfloat16")


@pytest.mark.aot
@pytest.mark.skipif(not HAS_GPU_COMPILER, reason='needs the aot-gpu extra: pip install -e ".[aot-gpu]"')
def test_gpu_compiler_compiles_the_step_for_h100_and_t4():
  out = _last_json(_compile_check(*_BF16_SMOKE, "--target=h100"))
  assert out["target"] == "h100" and out["device_kind"] == "NVIDIA H100 80GB HBM3"
  assert out["compiler"] == "XLA:GPU for h100" and out["fits"] is True
  assert out["attention"] == "cudnn" and out["cudnn_fmha_calls"] > 0
  assert 0 < out["peak_bytes"] < out["budget_bytes"] == int(81559 * 2 ** 20 * 0.75)
  t4 = _last_json(_compile_check(*_BF16_SMOKE, "--target=t4", "--mesh=data:2"))
  assert t4["devices"] == 2 and t4["attention"] == "xla" and t4["cudnn_fmha_calls"] == 0
  assert t4["batch_per_device"] == out["batch_per_device"] // 2
  # Too little memory: the search finds the k that fits the given memory.
  search = _last_json(_compile_check(*_BF16_SMOKE, "--target=h100", "--remat_options=none",
                                     f"--device_memory={int(out['peak_bytes'] * 0.9)}",
                                     "--usable_fraction=1"))
  assert search["fits"] is False and search["pick"]["grad_accum_steps"] > 1


@pytest.mark.aot
@pytest.mark.skipif(not HAS_TPU_COMPILER, reason='needs the aot-tpu extra: pip install -e ".[aot-tpu]"')
def test_tpu_compiler_compiles_the_step_for_a_v5e_slice():
  out = _last_json(_compile_check(*_BF16_SMOKE, "--target=tpu:v5e:2x2"))
  assert out["target"] == "tpu:v5e:2x2" and out["devices"] == 4
  assert out["device_kind"] == "TPU v5 lite" and out["attention"] == "xla"
  assert out["device_memory_bytes"] == 16 * 2 ** 30 and out["usable_fraction"] == 1.0
  assert out["fits"] is True and out["peak_bytes"] > 0
  bad = _compile_check(*_BF16_SMOKE, "--target=tpu:v5e:2x2", "--mesh=data:8")
  assert bad.returncode != 0 and "4 are present" in bad.stderr


def test_a_compile_the_tpu_compiler_refuses_is_read_as_does_not_fit():
  from launch import xla_memory  # pylint: disable=import-outside-toplevel
  error = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
                       "required for HLO temporaries (27.37G) exceeds available HBM "
                       "(15.75G).")
  stats = xla_memory.compile_oom_stats(error)
  assert stats["temp_bytes"] == int(27.37 * 2 ** 30)
  assert xla_memory.peak_estimate(stats) == stats["temp_bytes"]
  assert xla_memory.compile_oom_stats(RuntimeError("INVALID_ARGUMENT: bad shape")) is None
