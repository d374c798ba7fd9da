"""Data layer: Sudoku, Maze and ARC datasets for HRM, built once, read fast.

Public API (what the trainer uses):
  default_config(name) -> data ConfigDict ("sudoku", "maze" or "arc")
  load(data_cfg, split) -> PuzzleSplit (builds the TFDS dataset on first use)
  TrainSampler(split, global_batch_size, seed, process_index, process_count)
  eval_batches(split, global_batch_size, process_index, process_count)
  DataError, DatasetMetadata, PuzzleSplit
Modules: sudoku/sudoku_solver, maze, arc (families); builders (TFDS);
npy_format (reference layout); sampler; config; build (CLI).
"""

from hrm_jax.data.config import default_config
from hrm_jax.data.errors import DataError
from hrm_jax.data.loader import load
from hrm_jax.data.puzzles import DatasetMetadata
from hrm_jax.data.puzzles import IGNORE_LABEL_ID
from hrm_jax.data.puzzles import PuzzleSplit
from hrm_jax.data.puzzles import read_dataset_info
from hrm_jax.data.puzzles import write_dataset_info
from hrm_jax.data.sampler import eval_batches
from hrm_jax.data.sampler import TrainSampler

__all__ = [
    "DataError", "DatasetMetadata", "IGNORE_LABEL_ID", "PuzzleSplit",
    "TrainSampler", "default_config", "eval_batches", "load", "read_dataset_info",
    "write_dataset_info",
]
