"""Sudoku/Maze evaluator: the reference's eval metrics (exact_accuracy = paper metric).

Sums the per-batch metric sums of `steps.eval_step` and divides every key by the
number of rows with labels (reference `pretrain.evaluate`). With adaptive halting
`steps` is the mean number of segments used.
"""
from typing import Any

from hrm_jax import steps


class Evaluator:
  """Accumulates metric sums over the eval batches of one evaluation."""
  needs_rows = False

  def __init__(self, split: Any, eval_cfg: Any, workdir: Any):
    del split, eval_cfg, workdir
    self._sums: dict[str, float] = {}

  def reset(self) -> None:
    self._sums = {}

  def add(self, metric_sums: dict[str, Any], rows: dict[str, Any] | None) -> None:
    del rows
    for key, value in metric_sums.items():
      self._sums[key] = self._sums.get(key, 0.0) + float(value)

  def result(self) -> dict[str, float]:
    return steps.reduce_eval_metrics(self._sums)
