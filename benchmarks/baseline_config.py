"""The transformer baseline on a task's paper config, with 8 heads.

`--config=benchmarks/baseline_config.py:TASK` with TASK sudoku, maze, arc or
arc2: the HRM paper config of that task (data, batch 768, optimiser) with the
model replaced by the baseline (`experiments/common.baseline_settings`: one stack
of 8 post-norm blocks, hidden 512, called once per segment) but with 8 heads
instead of its yaml's 12 (head dim 42, which cuDNN attention cannot take; the
experiment variant `experiments/arc.py:baseline` has the 12).
Used by `benchmarks/paper_memory.py` for the baseline rows.
"""
import importlib

from experiments import common


def get_config(arg: str | None = None):
  task = arg or "sudoku"
  module, variant = {"sudoku": ("sudoku", None), "maze": ("maze", None),
                     "arc": ("arc", None), "arc2": ("arc", "arc2")}[task]
  c = importlib.import_module(f"experiments.{module}").get_config(variant)
  common.baseline_settings(c)
  c.model.num_heads = 8  # the memory tables' rows: head dim 64, cuDNN attention
  return c
