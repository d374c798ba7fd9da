"""The transformer baseline on a task's paper config (no experiment variant has it).

`--config=benchmarks/baseline_config.py:TASK` with TASK sudoku, maze, arc or
arc2: the HRM paper config of that task (data, batch 768, optimiser) with the
model replaced by the `transformer` family's defaults: one stack of 8 post-norm
blocks, hidden 512, 8 heads (the TRM repo's `transformers_baseline.yaml` has 12:
head dim 42, which cuDNN attention cannot take), called once per segment.
Used by `benchmarks/paper_memory.py` for the baseline rows.
"""
import importlib

import ml_collections

from hrm_jax import models


def get_config(arg: str | None = None):
  task = arg or "sudoku"
  module, variant = {"sudoku": ("sudoku", None), "maze": ("maze", None),
                     "arc": ("arc", None), "arc2": ("arc", "arc2")}[task]
  c = importlib.import_module(f"experiments.{module}").get_config(variant)
  c.model = ml_collections.ConfigDict(models.default_fields("transformer"))
  return c
