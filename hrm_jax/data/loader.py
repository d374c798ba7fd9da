"""`load(data_cfg, split)`: build the dataset once, then read it into memory.

Whole splits are held in numpy: the paper's datasets fit (Sudoku 1M x 81,
ARC ~4M x 900 uint8), and in-memory gathers make the sampler fast and its
state trivial. On several hosts sharing a data_dir, build first with
`python -m hrm_jax.data.build` so that the hosts do not race to write it.
"""

from __future__ import annotations

import time

from hrm_jax.data import builders
from hrm_jax.data import families
from hrm_jax.data import npy_format
from hrm_jax.data import puzzles

SPLITS = ("train", "test")


def load(data_cfg, split: str) -> puzzles.PuzzleSplit:
  """Returns `split` ("train" or "test") of the dataset `data_cfg` describes.

  `npy:<dir>` sources are read in place; everything else is built into
  `data_cfg.data_dir` as a TFDS dataset named by a hash of the config (a
  changed config builds anew), then read with batched `__getitems__` calls.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if data_cfg.source.startswith("npy:"):
    return npy_format.read_split(data_cfg.source[len("npy:"):], split)
  builder = prepare(data_cfg)
  return builders.read_split(builder, split)


def shape(data_cfg) -> puzzles.DatasetShape:
  """Vocabulary, length and puzzle-id count of the dataset `data_cfg` describes,
  without building it (`npy:` datasets: read from their dataset.json)."""
  if data_cfg.source.startswith("npy:"):
    return npy_format.read_shape(data_cfg.source[len("npy:"):])
  return families.get(data_cfg.family).shape(data_cfg)


def prepare(data_cfg):
  """Builds the TFDS dataset if needed; returns the prepared builder."""
  builder = builders.builder_for(data_cfg)
  if not builder.is_prepared():
    start = time.time()
    print(f"[hrm_jax.data] building {builder.name}/"
          f"{builder.builder_config.name} in {data_cfg.data_dir}", flush=True)
    builder.download_and_prepare()
    print(f"[hrm_jax.data] built in {time.time() - start:.1f} s", flush=True)
  return builder
