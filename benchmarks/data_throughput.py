"""Train-sampler throughput on an ARC-shaped split (seq 900, batch 768).

  .venv/bin/python benchmarks/data_throughput.py [--groups=960 --variants=100]

The split is synthetic (random tokens) but shaped like the paper's ARC data:
`groups` tasks x `variants` augmented puzzles x 1..8 examples (mean 4.5) of
900 tokens, held in memory as the loader holds it. Measures the steady state
of `TrainSampler.__next__` (host-local numpy batches, int32) on one process.
The last printed line is one JSON object.
"""

import json
import time

from absl import app
from absl import flags
import numpy as np

from hrm_jax import data
from hrm_jax.data import puzzles

_GROUPS = flags.DEFINE_integer("groups", 960, "Groups (ARC tasks).")
_VARIANTS = flags.DEFINE_integer("variants", 100, "Puzzles per group.")
_BATCH = flags.DEFINE_integer("batch", 768, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 300, "Timed batches.")
_PROCESSES = flags.DEFINE_integer("process_count", 1, "Simulated hosts; "
                                  "times process 0's slice.")


def arc_shaped_split(groups: int, variants: int, seq: int = 900):
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 9, groups * variants)
  n = int(sizes.sum())
  tokens = rng.integers(0, 12, (n, seq), dtype=np.uint8)
  meta = puzzles.DatasetMetadata(
      vocab_size=12, seq_len=seq, num_puzzle_identifiers=groups * variants + 1,
      pad_id=0, ignore_label_id=0, blank_identifier_id=0, total_groups=groups,
      mean_puzzle_examples=n / sizes.size)
  return puzzles.PuzzleSplit(
      inputs=tokens, labels=tokens[:, ::-1].copy(),
      puzzle_identifiers=np.arange(1, sizes.size + 1, dtype=np.int32),
      puzzle_indices=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
      group_indices=np.arange(0, sizes.size + 1, variants, dtype=np.int64),
      metadata=meta, identifiers=["<blank>"] * (sizes.size + 1))


def main(argv):
  del argv
  split = arc_shaped_split(_GROUPS.value, _VARIANTS.value)
  sampler = data.TrainSampler(split, _BATCH.value, seed=0, process_index=0,
                              process_count=_PROCESSES.value)
  for _ in range(10):
    next(sampler)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    batch = next(sampler)
  seconds = time.perf_counter() - start
  rate = _STEPS.value / seconds
  print(f"{split.num_examples} examples x 900 in memory; local batch "
        f"{batch['inputs'].shape}; epochs crossed: {sampler.epoch}")
  print(json.dumps({"batches_per_s": round(rate, 1),
                    "examples_per_s": round(rate * _BATCH.value
                                            / _PROCESSES.value),
                    "global_batch_size": _BATCH.value, "seq_len": 900,
                    "process_count": _PROCESSES.value}))


if __name__ == "__main__":
  app.run(main)
