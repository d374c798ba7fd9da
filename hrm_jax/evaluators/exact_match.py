"""Sudoku/Maze evaluator: the reference's eval metrics (exact_accuracy = paper metric).

Adds the per-batch metric sums of the eval step and reduces them as
`hrm_jax.metrics` says (every metric per evaluated row: reference
`pretrain.evaluate`). With adaptive halting `steps` is the mean number of
segments used.

Sampled trajectories (`config.eval.num_samples` K > 1, `hrm_jax.sampling`):
the eval step reports every on-device rule and the oracle; this evaluator
adds the checker's (`exact_checker`, `checker_unsure`) from the rows, where
the trainer has put the family's rule check of every candidate
(`sample_accepted`). `exact_accuracy` is the accuracy of the rule
`config.eval.select` (with "checker", the checker's, and so is every other
metric: the eval step gives every sample's metrics, `sample_metrics`, and this
evaluator sums those of the checker's picks).
"""
from typing import Any

import numpy as np

from hrm_jax import metrics, sampling


class Evaluator:
  """Accumulates metric sums over the eval batches of one evaluation."""
  # With K samples, one evaluation reports the exact accuracy of every rule.
  reports_every_rule = True

  def __init__(self, split: Any, eval_cfg: Any, workdir: Any):
    del split, workdir
    self._select = eval_cfg.get("select", "q_halt")
    # Rows (on the host) only when the checker runs on them.
    self.needs_rows = sampling.uses_checker(eval_cfg.get("num_samples", 1), self._select)
    self._sums = metrics.Sums()

  def reset(self, step: int | None = None) -> None:
    del step  # no state outside one evaluation
    self._sums = metrics.Sums()

  def add(self, metric_sums: dict[str, Any], rows: dict[str, Any] | None) -> None:
    sums = dict(metric_sums)
    if rows is not None and "sample_accepted" in rows:
      predictions, q_halt = sampling.candidates(rows)
      sums.update(sampling.checker_metric_sums(rows["sample_accepted"], predictions,
                                               q_halt, rows["labels"]))
      if self._select == "checker" and "sample_metrics" in rows:
        # Every metric of the checker's pick, not only its exact accuracy.
        choice, _ = sampling.by_checker(rows["sample_accepted"], q_halt)
        sums.update({k: float(np.sum(sampling.take(np.asarray(v), np.asarray(choice))))
                     for k, v in rows["sample_metrics"].items()})
    self._sums.add(sums)

  def result(self) -> dict[str, float]:
    out = self._sums.eval_result()
    if self._select == "checker" and "exact_checker" in out:
      out["exact_accuracy"] = out["exact_checker"]
    return out
