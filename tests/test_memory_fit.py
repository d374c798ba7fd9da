"""Fitting the train step to a device's memory (`hrm_jax.memory_fit`, issue 20).

The trainer compiles the step ahead of time and, when XLA's peak exceeds what the
device holds, raises grad_accum_steps (the same updates: tests/test_accum.py) to the
first choice that fits; not even one row per micro-batch fitting is a one-line error.
"""
import functools

import jax
import pytest

from hrm_jax import errors, memory_fit, sharding, steps
from test_train_step import opt_config, tiny_config

B = 16  # on one device: k in 1, 2, 4, 8, 16


@functools.lru_cache(maxsize=None)  # one build (and so one compile) per k
def _build(k):
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  return steps.build_train_step(tiny_config(seq_len=64, hidden_size=64), opt_config(),
                                total_steps=10,
                                global_batch_size=B, mesh=mesh, grad_accum_steps=k)


def _args(program):
  return (*program.abstract_args()[:3], jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _peak(k):
  program = _build(k)
  return memory_fit.peak_bytes(program.step.lower(*_args(program)).compile())


def test_accumulation_choices_refine_the_configured_k():
  assert memory_fit.accumulation_choices(1, 12) == [1, 2, 3, 4, 6, 12]
  assert memory_fit.accumulation_choices(2, 12) == [2, 4, 6, 12]
  assert memory_fit.accumulation_choices(4, 4) == [4]


@pytest.mark.slow
def test_fit_keeps_k_when_it_fits_and_raises_it_when_it_does_not():
  peaks = {k: _peak(k) for k in (1, 2, 4)}
  assert peaks[1] > peaks[2] > peaks[4]  # accumulation saves activation memory
  program, _, peak = memory_fit.fit(_build, _args, 1, B, None, "no limit")
  assert program.grad_accum_steps == 1 and peak == peaks[1]
  program, _, peak = memory_fit.fit(_build, _args, 1, B, peaks[1], "exactly enough")
  assert program.grad_accum_steps == 1
  # Between the peaks of k = 4 and k = 2: the first choice that fits is 4.
  budget = (peaks[2] + peaks[4]) // 2
  program, _, peak = memory_fit.fit(_build, _args, 1, B, budget, "a small device")
  assert program.grad_accum_steps == 4 and peak == peaks[4] <= budget


def test_nothing_fits_is_a_one_line_runtime_error():
  with pytest.raises(memory_fit.DoesNotFitError) as e:
    memory_fit.fit(_build, _args, 1, B, 1024, "a 1 KiB device")
  failure = errors.explain(e.value)
  assert failure.exit_code == errors.RUNTIME
  assert "one row per micro-batch" in failure.message and "1 KiB device" in failure.message
  assert len(failure.message.splitlines()) == 1


def test_available_bytes_of_this_host():
  budget, where = memory_fit.available_bytes()
  assert budget is not None and 0 < budget and "free" in where
  assert memory_fit.agreed_budget(budget) == budget  # one process
