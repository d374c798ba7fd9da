"""Device memory of the compiled train step, and fitting it by accumulation.

A paper config started on a machine smaller than its paper's (one GPU instead
of eight, a laptop's CPU) would otherwise die at its first step with the
allocator's RESOURCE_EXHAUSTED traceback. Instead the trainer compiles the step
ahead of time (the first call then reuses that executable), reads XLA's memory
analysis and, when the step does not fit this device, runs the batch in more
micro-batches (`config.grad_accum_steps`: the same updates, the activation
memory of fewer rows; `steps.accumulated_train_step`) until it does. It says
so in one log line; `config.auto_accumulate=False` turns it off (the step then
runs as configured, and fails as the allocator decides).

What a device can hold (`available_bytes`): on GPUs and TPUs the allocator's
own limit (`memory_stats()["bytes_limit"]`: on GPUs JAX's preallocated
fraction); on the CPU what the host has free (MemAvailable, or the cgroup's
limit if lower) less a margin for the host-side data, shared by the local
CPU devices. Several processes agree on the smallest figure, so every process
compiles the same step.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# The host keeps data, checkpoints' host copies and Python around the step.
CPU_USABLE_FRACTION = 0.8
_GIB = float(1 << 30)


class DoesNotFitError(RuntimeError):
  """The step does not fit this device even with one row per micro-batch."""


def peak_of(argument: int, output: int, alias: int, temp: int) -> int:
  """The per-device peak of a step from XLA's memory analysis: the live arguments,
  the outputs not aliased to them (donation) and the temporaries."""
  return int(argument + output - alias + temp)


def peak_bytes(compiled, temporaries: bool = True) -> int | None:
  """`peak_of` a compiled step (without its temporaries if told); None where the
  backend gives no analysis."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-exception-caught
    return None
  if m is None:
    return None
  return peak_of(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
                 m.temp_size_in_bytes if temporaries else 0)


def _read_int(path: str) -> int | None:
  try:
    with open(path, encoding="ascii") as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def _host_free_bytes() -> int | None:
  """MemAvailable, capped by a cgroup (v2 or v1) memory limit."""
  free = None
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          free = int(line.split()[1]) * 1024
  except OSError:
    pass
  for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                  "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
    limit, usage = _read_int(limit_file), _read_int(usage_file)
    if limit is not None and usage is not None and limit < (1 << 60):
      free = min(free, limit - usage) if free is not None else limit - usage
  return free


def available_bytes(device=None) -> tuple[int | None, str]:
  """(bytes one device of this process may use for the step, what that is)."""
  device = device or jax.local_devices()[0]
  if device.platform == "cpu":
    free = _host_free_bytes()
    if free is None:
      return None, "unknown host memory"
    share = int(free * CPU_USABLE_FRACTION / jax.local_device_count())
    return share, (f"{CPU_USABLE_FRACTION:.0%} of the host's {free / _GIB:.1f} GiB free"
                   + (f" over {jax.local_device_count()} CPU devices"
                      if jax.local_device_count() > 1 else ""))
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-exception-caught
    stats = {}
  limit = stats.get("bytes_limit")
  if not limit:
    return None, f"unknown {device.device_kind} memory"
  return int(limit), f"the {device.device_kind}'s {int(limit) / _GIB:.1f} GiB"


def agreed_budget(budget: int | None) -> int | None:
  """The smallest budget over every process (None if any process knows none)."""
  if jax.process_count() == 1:
    return budget
  everyone = multihost_utils.process_allgather(np.asarray(-1 if budget is None else budget,
                                                          np.int64))
  everyone = np.asarray(everyone).reshape(-1)
  return None if (everyone < 0).any() else int(everyone.min())


def accumulation_choices(k: int, per_device_batch: int) -> list[int]:
  """k and the larger micro-batch counts that split the per-device batch evenly,
  multiples of k (so a configured k is only ever refined)."""
  return [d for d in range(k, per_device_batch + 1)
          if per_device_batch % d == 0 and d % k == 0]


def fit(build: Callable[[int], object], lower_args: Callable[[object], tuple], k: int,
        per_device_batch: int, budget: int | None, where: str):
  """The first program (`build(k')` for k' in `accumulation_choices`) whose compiled
  step fits `budget` bytes per device, with its peak.

  Tries the configured k first, then the choice that a linear model of the
  temporaries (they scale with the rows of a micro-batch) predicts to fit, then the
  next larger ones. Returns (program, compiled step, peak bytes or None).

  Raises:
    DoesNotFitError: not even one row per micro-batch fits.
  """
  program = build(k)
  compiled = program.step.lower(*lower_args(program)).compile()
  peak = peak_bytes(compiled)
  if budget is None or peak is None or peak <= budget:
    return program, compiled, peak
  first_peak, fixed = peak, peak_bytes(compiled, temporaries=False)
  choices = accumulation_choices(k, per_device_batch)[1:]
  predicted = [c for c in choices if fixed + (first_peak - fixed) * k / c <= budget]
  start = choices.index(predicted[0]) if predicted else len(choices) - 1
  for choice in choices[start:]:
    program = build(choice)
    compiled = program.step.lower(*lower_args(program)).compile()
    peak = peak_bytes(compiled)
    if peak is not None and peak <= budget:
      logging.warning(
          "The train step needs %.1f GiB per device at grad_accum_steps=%d, more than %s "
          "(%.1f GiB usable): running each device's %d rows in %d micro-batches of %d "
          "instead (%.1f GiB; the same updates: config.grad_accum_steps=%d, set it to keep "
          "this choice; config.auto_accumulate=False turns this off).",
          first_peak / _GIB, k, where, budget / _GIB, per_device_batch, choice,
          per_device_batch // choice, peak / _GIB, choice)
      return program, compiled, peak
  raise DoesNotFitError(
      f"The train step needs {first_peak / _GIB:.1f} GiB per device at "
      f"grad_accum_steps={k} and still {peak / _GIB:.1f} GiB with one row per micro-batch "
      f"(grad_accum_steps={choices[-1] if choices else k}); {where} leaves "
      f"{budget / _GIB:.1f} GiB. Use more devices (config.mesh), a smaller model, or "
      "config.model.remat='blocks' (recompute instead of storing activations).")
