"""Metrics: how every metric is reduced, stated once, and the host-side sums.

The train and eval steps return *sums* (over rows, for one step); the host adds
them over steps and reduces each metric by the rule in `REDUCTIONS` (the
reference's rules, `pretrain.py`):

  PER_HALTED  a sum over the rows that halted this step with at least one
              label, divided by their count (accuracy, exact accuracy, mean
              segments used, Q-halt accuracy);
  PER_ROW     a loss summed over every row of the global batch: train divides
              by the global batch size (the mean the reference's all-reduce of
              `loss / global_batch_size` gives), eval by the count;
  PER_STEP    one value per step (learning rates, norms): the mean over steps;
  COUNT       rows counted: eval reports the number of rows evaluated, train
              the mean number of rows halted per step (`halted_per_step`).

A metric without an entry is an error, not a guess from its spelling.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from hrm_jax.data.puzzles import IGNORE_LABEL_ID

PER_HALTED, PER_ROW, PER_STEP, COUNT = "per_halted", "per_row", "per_step", "count"

REDUCTIONS: dict[str, str] = {
    "count": COUNT,
    "accuracy": PER_HALTED,
    "exact_accuracy": PER_HALTED,
    "q_halt_accuracy": PER_HALTED,
    "steps": PER_HALTED,
    # Evaluation with K sampled trajectories (`hrm_jax.sampling`), per evaluated row.
    "exact_q_halt": PER_HALTED,
    "exact_vote": PER_HALTED,
    "exact_checker": PER_HALTED,
    "exact_oracle": PER_HALTED,
    "exact_mean_sample": PER_HALTED,
    "distinct_answers": PER_HALTED,
    "checker_unsure": PER_HALTED,
    "exact_first_halt": PER_HALTED,
    "exact_confidence": PER_HALTED,
    # Segments of all K samples, and network calls (NFE: those segments x the
    # family's calls per segment), per evaluated row.
    "sample_steps": PER_HALTED,
    "nfe": PER_HALTED,
    "loss": PER_ROW,
    "lm_loss": PER_ROW,
    "q_halt_loss": PER_ROW,
    "q_continue_loss": PER_ROW,
    "lr": PER_STEP,
    "puzzle_emb_lr": PER_STEP,
    "grad_norm": PER_STEP,
    "param_norm": PER_STEP,
    "update_norm": PER_STEP,
}


def reduction(name: str) -> str:
  if name not in REDUCTIONS:
    raise KeyError(f"metric {name!r} has no reduction: add it to "
                   "hrm_jax.metrics.REDUCTIONS (per halted row, per row, per step "
                   "or a count).")
  return REDUCTIONS[name]


class Sums:
  """Adds per-step metric sums on the host; reduces them by `REDUCTIONS`."""

  def __init__(self):
    self._sums: dict[str, float] = {}
    self.num_steps = 0

  def add(self, step_sums: Mapping[str, float]) -> None:
    """Adds the sums of one step (host numbers: call after `jax.device_get`)."""
    for key, value in step_sums.items():
      reduction(key)  # fail at the first step, not at the first log
      self._sums[key] = self._sums.get(key, 0.0) + float(value)
    self.num_steps += 1

  def train_result(self, global_batch_size: int) -> dict[str, float]:
    """Reduced training metrics over the steps added so far."""
    count = max(self._sums.get("count", 0.0), 1.0)
    steps = max(self.num_steps, 1)
    out = {}
    for key, value in self._sums.items():
      rule = reduction(key)
      if rule == PER_HALTED:
        out[key] = value / count
      elif rule == PER_ROW:
        out[key] = value / (global_batch_size * steps)
      elif rule == PER_STEP:
        out[key] = value / steps
      else:
        out["halted_per_step"] = value / steps
    return out

  def eval_result(self) -> dict[str, float]:
    """Reduced evaluation metrics: every metric per evaluated row, and the count."""
    count = max(self._sums.get("count", 0.0), 1.0)
    out = {}
    for key, value in self._sums.items():
      if reduction(key) == PER_STEP:
        raise KeyError(f"metric {key!r} is per step; evaluation sums are per row.")
      out[key] = value if reduction(key) == COUNT else value / count
    return out


def exact_rows(predictions_BxS: np.ndarray, labels_BxS: np.ndarray) -> np.ndarray:
  """bool [B]: every supervised token right (the paper's exact accuracy)."""
  labels = np.asarray(labels_BxS)
  return np.all((np.asarray(predictions_BxS) == labels) | (labels == IGNORE_LABEL_ID),
                axis=-1)
