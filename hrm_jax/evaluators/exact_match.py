"""Sudoku/Maze evaluator: the reference's eval metrics (exact_accuracy = paper metric).

Adds the per-batch metric sums of the eval step and reduces them as
`hrm_jax.metrics` says (every metric per evaluated row: reference
`pretrain.evaluate`). With adaptive halting `steps` is the mean number of
segments used.
"""
from typing import Any

from hrm_jax import metrics


class Evaluator:
  """Accumulates metric sums over the eval batches of one evaluation."""
  needs_rows = False

  def __init__(self, split: Any, eval_cfg: Any, workdir: Any):
    del split, eval_cfg, workdir
    self._sums = metrics.Sums()

  def reset(self) -> None:
    self._sums = metrics.Sums()

  def add(self, metric_sums: dict[str, Any], rows: dict[str, Any] | None) -> None:
    del rows
    self._sums.add(metric_sums)

  def result(self) -> dict[str, float]:
    return self._sums.eval_result()
