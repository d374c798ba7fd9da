"""How long a run is and when it evaluates: the one place epochs become steps.

`plan_run` plans a run as the reference does (iterations of `eval_interval`
epochs, an evaluation after each) or, for step-based configs, exactly
`total_steps` updates; the sampler (`data.TrainSampler`) streams the same
iterations, so the two agree batch for batch.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import numpy as np
from absl import logging

from hrm_jax import data


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """How long a run is and when it evaluates; the one place epochs become steps.

  Attributes:
    total_steps: optimizer updates the run makes.
    schedule_steps: length of the LR schedules. Epoch-based runs use the
      reference's `int(epochs * examples_per_epoch / global_batch)`, its planned
      `total_steps`: it can exceed the updates the iterations hold (Sudoku-1k:
      26,041 vs 26,040) exactly as there, and where the iterations hold more
      (ARC) the updates stop at it, as the reference's do.
    eval_steps: the steps after which the run evaluates (sorted, distinct; the
      last is total_steps).
    epochs_per_iteration: the sampler's iteration length in epochs.
    untrained_batches: batches the iterations hold past total_steps (epoch-based
      runs only): the reference draws them and skips their updates; this run
      ends at total_steps instead.
  """
  total_steps: int
  schedule_steps: int
  eval_steps: tuple[int, ...]
  epochs_per_iteration: int
  untrained_batches: int = 0


# Step-based runs: an iteration (whose last partial batch is dropped) holds at
# least this many batches, so at most ~1% of the examples are skipped.
MIN_BATCHES_PER_ITERATION = 100


def examples_per_epoch(metadata) -> float:
  """Reference: one epoch = total_groups * mean_puzzle_examples examples."""
  return metadata.total_groups * metadata.mean_puzzle_examples


def plan_run(config: ml_collections.ConfigDict, metadata,
             batches_in_iteration: Callable[[int, int], int]) -> RunPlan:
  """The run's length and evaluation points (see `RunPlan`).

  Epoch-based runs (`config.total_steps <= 0`) are planned as the reference
  plans them: `epochs / eval.every_epochs` iterations of `eval.every_epochs`
  epochs each, an evaluation after every iteration, and as many updates as the
  iterations hold (each drops only its last partial batch), but no more than
  the reference's planned `total_steps` (`schedule_steps`): its `train_batch`
  returns without an update past it (HRM and TRM alike; ARC's iterations hold
  ~0.2% / 0.5% more batches for ARC-1 / ARC-2). An evaluation the reference makes
  after its last update is made at the last update here. Step-based runs
  (`config.total_steps > 0`, the CPU recipes) make exactly that many updates,
  evaluate every `eval.every_steps` and after the last step, and stream in
  iterations of the fewest epochs that hold `MIN_BATCHES_PER_ITERATION`
  batches: a function of the data and the batch only, so a run resumed with a
  longer `total_steps` or another evaluation interval continues the same stream.

  Args:
    config: the run config.
    metadata: the train split's DatasetMetadata.
    batches_in_iteration: `(iteration, epochs_per_iteration) -> batches`, the
      sampler's exact count.
  """
  B = config.batch_size
  per_epoch = examples_per_epoch(metadata)
  if config.total_steps > 0:
    total = int(config.total_steps)
    every = (config.eval.every_steps if config.eval.every_steps > 0
             else int(config.eval.every_epochs * per_epoch / B))
    every = max(1, min(every, total))
    evals = sorted(set(range(every, total + 1, every)) | {total})
    epochs_per_iteration = max(1, -(-MIN_BATCHES_PER_ITERATION * B // max(1, int(per_epoch))))
    return RunPlan(total, total, tuple(evals), epochs_per_iteration)
  epochs, interval = int(config.epochs), int(config.eval.every_epochs)
  if interval < 1 or epochs < interval or epochs % interval:
    raise ValueError(f"config.epochs={epochs} must be a multiple of "
                     f"config.eval.every_epochs={interval} (the reference's eval_interval), "
                     "or set config.total_steps and config.eval.every_steps.")
  boundaries = np.cumsum([batches_in_iteration(i, interval)
                          for i in range(epochs // interval)]).tolist()
  if boundaries[-1] < 1:
    raise ValueError(f"The run has no updates: {epochs} epochs of {per_epoch:g} examples "
                     f"do not fill one batch of {B}.")
  planned = max(1, int(epochs * per_epoch / B))  # the reference's total_steps
  total = min(int(boundaries[-1]), planned)
  evals = tuple(sorted(set(min(b, total) for b in boundaries if b > 0)))
  if config.eval.every_steps > 0:
    evals = tuple(sorted(set(range(config.eval.every_steps, total + 1,
                                   config.eval.every_steps)) | {total}))
  return RunPlan(total, planned, evals, interval,
                 untrained_batches=int(boundaries[-1]) - total)


def plan_for_split(config, train_split) -> RunPlan:
  """`plan_run` with the sampler's exact batch counts for this split."""
  counts = {}

  def batches_in_iteration(iteration: int, epochs_per_iteration: int) -> int:
    if epochs_per_iteration not in counts:  # one sampler per iteration length
      counts[epochs_per_iteration] = data.TrainSampler(
          train_split, config.batch_size, config.seed,
          epochs_per_iteration=epochs_per_iteration)
    return counts[epochs_per_iteration].batches_in_iteration(iteration)

  plan = plan_run(config, train_split.metadata, batches_in_iteration)
  if plan.untrained_batches:
    logging.info("The iterations hold %d batches past the planned %d updates (int(epochs "
                 "* examples per epoch / batch)); as the reference, the run stops "
                 "updating there.", plan.untrained_batches, plan.total_steps)
  return plan
