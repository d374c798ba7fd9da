"""One evaluation of the trainer: its batches, progress, stop polling and record.

The trainer saves the state of an evaluation step *before* evaluating it (the
state evaluated is the state saved), so a stop signal or a pod's preemption
notice during a long evaluation (ARC: ~400 tasks x 1000 variants x 16
segments) need not wait for it: `evaluate` polls `should_stop` between batches
and gives up at the next one (`EvaluationCut`); the run leaves through its
normal stop path with that checkpoint, and on resume `pending_step` finds the
evaluation of the restored step missing from WORKDIR/metrics.jsonl and it runs
before training goes on, so an interrupted run's record equals an
uninterrupted one's.
"""
from __future__ import annotations

import importlib
import math
import time
from typing import Callable, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from hrm_jax import data, metric_writers, models, sampling, sharding, steps

# An evaluation that takes longer than this shows progress lines, this often.
PROGRESS_EVERY_S = 5.0


class EvaluationCut(Exception):
  """A stop signal arrived during an evaluation; it ran `done` of `total` batches."""

  def __init__(self, done: int, total: int):
    super().__init__(f"evaluation cut short after {done}/{total} batches")
    self.done, self.total = done, total


def load_evaluator(eval_cfg, split, workdir):
  """Evaluators are plug-ins: hrm_jax.evaluators.<type>.Evaluator."""
  try:
    module = importlib.import_module(f"hrm_jax.evaluators.{eval_cfg.type}")
  except ModuleNotFoundError as e:
    raise ValueError(f"config.eval.type={eval_cfg.type!r} has no module "
                     f"hrm_jax.evaluators.{eval_cfg.type}.") from e
  return module.Evaluator(split=split, eval_cfg=eval_cfg, workdir=workdir)


def segments(eval_cfg, model_cfg) -> int:
  """Segments an evaluation runs at most: `eval.halt_max_steps`, or (<= 0) the
  model's training value."""
  return int(eval_cfg.halt_max_steps if eval_cfg.get("halt_max_steps", -1) > 0
             else model_cfg.halt_max_steps)


def build(config, model, split, workdir):
  """(eval_fn, evaluator) of a run's evaluation as `config.eval` says: the jitted
  eval step (`steps.build_eval_step`) with `nfe` added to its sums, and the
  evaluator plug-in. Bad options (an unknown rule, "checker" for a family
  without a rule check) fail here."""
  eval_cfg = config.eval
  sampling.check_family(eval_cfg.select, config.data.family,
                        data.family(config.data.family).check_answer)
  step = steps.build_eval_step(model, segments(eval_cfg, model.config),
                               eval_cfg.adaptive_halting, num_samples=eval_cfg.num_samples,
                               latent_noise=eval_cfg.latent_noise, select=eval_cfg.select,
                               noise_on=eval_cfg.noise_on)
  calls = models.family_of(model.config).calls_per_segment(model.config)

  def eval_fn(weights, batch, rng):
    sums, rows = step(weights, batch, rng)
    # NFE: network calls per puzzle, every sample's segments x calls per segment.
    return dict(sums, nfe=calls * sums.get("sample_steps", sums["steps"])), rows

  return eval_fn, load_evaluator(eval_cfg, split, workdir)


def batch_size(split, eval_cfg, num_devices: int) -> int:
  """Rows per evaluation batch: `eval.batch_size`, or for a smaller split the split's
  size rounded up to the devices (no batch of padding rows)."""
  fitted = math.ceil(max(1, split.num_examples) / num_devices) * num_devices
  return min(int(eval_cfg.batch_size), fitted)


def num_batches(split, eval_cfg, num_devices: int) -> int:
  total = math.ceil(split.num_examples / batch_size(split, eval_cfg, num_devices))
  return min(total, eval_cfg.max_batches) if eval_cfg.max_batches >= 0 else total


def _agreed(flag: bool) -> bool:
  """Whether any process says stop (each eval batch is a collective: all agree)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray(flag))).any())


def evaluate(weights, split, eval_fn, evaluator, config, mesh, *,
             should_stop: Callable[[], bool] | None = None,
             label: str = "", step: int | None = None,
             timing: dict | None = None,
             report: Callable[[str], None] | None = None) -> dict[str, float]:
  """Runs the evaluator over the test split (or its first max_batches).

  Batch i's sampling noise comes from `config.eval.sample_seed` folded with i (the
  same on every process). When the evaluator needs rows and the evaluation checks
  answers (`sampling.uses_checker`), the family's rule check of every candidate
  is added to them as `sample_accepted` [B, K] (host-side, numpy).

  `step` (the train step of the weights, None outside a run) is handed to the
  evaluator's `reset`: an evaluator that pools over a run's evaluations (ARC's
  aggregated votes) keys its saved pool by it. `timing`, when given, receives `seconds` (the
  whole evaluation), `batches`, `rows_per_batch` and `first_batch_seconds` (it
  compiles): throughput figures leave the first batch out. Progress lines go to
  `report` (default: the log, at INFO).

  Raises:
    EvaluationCut: `should_stop()` turned true (polled before each batch, agreed
      over processes; None: never polled).
  """
  start = time.perf_counter()
  if step is None:  # plug-ins that keep nothing between evaluations take no step
    evaluator.reset()
  else:
    evaluator.reset(step=step)
  eval_cfg = config.eval
  check = data.family(config.data.family).check_answer
  run_checker = check is not None and sampling.uses_checker(eval_cfg.num_samples,
                                                            eval_cfg.select)
  sample_key = jax.random.key(eval_cfg.sample_seed)
  rows_per_batch = batch_size(split, eval_cfg, mesh.devices.size)
  total = num_batches(split, eval_cfg, mesh.devices.size)
  batches: Iterator = data.eval_batches(split, rows_per_batch, jax.process_index(),
                                        jax.process_count())
  last_report = first_done = start
  for i, host_batch in enumerate(batches):
    if i >= total:
      break
    if should_stop is not None and _agreed(should_stop()):
      raise EvaluationCut(i, total)
    example_index = host_batch.pop("example_index")
    metric_sums, row_outputs = eval_fn(weights, sharding.global_batch(host_batch, mesh),
                                       jax.random.fold_in(sample_key, i))
    rows = None
    if evaluator.needs_rows:
      rows = sharding.to_host(row_outputs)
      rows["example_index"] = np.asarray(sharding.to_host(example_index))
      for key in ("puzzle_identifiers", "inputs", "labels"):
        rows[key] = np.asarray(sharding.to_host(host_batch[key]))
      if run_checker:
        rows["sample_accepted"] = sampling.accepted(
            check, rows["inputs"], sampling.candidates(rows)[0])
    evaluator.add(jax.device_get(metric_sums), rows)
    now = time.perf_counter()
    if timing is not None:
      timing.update(seconds=now - start, batches=i + 1, rows_per_batch=rows_per_batch)
    if i == 0:
      first_done = now  # the rate leaves out the first batch (it compiles)
      if timing is not None:
        timing["first_batch_seconds"] = now - start
    elif now - last_report >= PROGRESS_EVERY_S and i + 1 < total:
      rate = i / max(now - first_done, 1e-9)
      line = (f"{label or 'evaluation'}: batch {i + 1}/{total} ({rows_per_batch} rows "
              f"each), {rate:.2f} batches/s, ~"
              f"{metric_writers.format_duration((total - i - 1) / rate)} left.")
      (report or logging.info)(line)
      last_report = now
  return evaluator.result()


def pending_step(workdir, step: int, eval_steps) -> bool:
  """Whether the evaluation of `step` (a resumed run's first step) is still owed:
  `step` is an evaluation step and WORKDIR/metrics.jsonl records no evaluation of
  it (it was cut short, or the run died before writing it). Process 0 reads, every
  process gets its answer."""
  owed = False
  if step in eval_steps and jax.process_index() == 0:
    owed = not any(r.get("step") == step and any(k.startswith("eval/") for k in r)
                   for r in metric_writers.read_jsonl_metrics(workdir))
  if jax.process_count() > 1:
    owed = bool(multihost_utils.broadcast_one_to_all(np.asarray(owed)))
  return owed
