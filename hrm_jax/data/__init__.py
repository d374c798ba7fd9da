"""Data layer: Sudoku, Maze and ARC datasets for HRM, built once, read fast.

Public API (what the trainer and the tools use):
  FAMILIES / family(name) -> the puzzle-family modules (see `families.py`)
  default_config(family) -> data ConfigDict ("sudoku", "maze" or "arc")
  shape(data_cfg) -> DatasetShape (vocab, length, ids) without building
  load(data_cfg, split) -> PuzzleSplit (builds the TFDS dataset on first use)
  TrainSampler(split, global_batch_size, seed, process_index, process_count)
  eval_batches(split, global_batch_size, process_index, process_count)
  DataError, DatasetMetadata, DatasetShape, PuzzleSplit
Modules: families; sudoku/sudoku_solver, maze, arc (the families); builders
(TFDS); npy_format (reference layout); sampler; config; build (CLI).
"""

from hrm_jax.data.config import default_config
from hrm_jax.data.errors import DataError
from hrm_jax.data.families import FAMILIES
from hrm_jax.data.families import get as family
from hrm_jax.data.loader import load
from hrm_jax.data.loader import shape
from hrm_jax.data.puzzles import DatasetMetadata
from hrm_jax.data.puzzles import DatasetShape
from hrm_jax.data.puzzles import IGNORE_LABEL_ID
from hrm_jax.data.puzzles import PuzzleSplit
from hrm_jax.data.sampler import eval_batches
from hrm_jax.data.sampler import TrainSampler

__all__ = [
    "DataError", "DatasetMetadata", "DatasetShape", "FAMILIES", "IGNORE_LABEL_ID",
    "PuzzleSplit", "TrainSampler", "default_config", "eval_batches", "family", "load",
    "shape",
]
