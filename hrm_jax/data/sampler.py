"""Host-local batches: seeded group->puzzle->examples sampling and eval order.

Training (reference §5.2, `_iter_train`, with every draw seeded): epoch e
shuffles the groups and picks one random puzzle per group with
rng(seed, e); batches are filled by walking that order, taking each chosen
puzzle's examples in random order (rng(seed, e, batch)) and truncating the
puzzle that overflows the batch (its remaining examples are skipped, as in
the reference); an incomplete final batch is dropped and the next epoch
starts. One epoch = one random variant per group.

Every process computes the same global batch and keeps rows
[pi*B/pc, (pi+1)*B/pc), gathering only those. The iterator state is
(epoch, batch index, group cursor): plain ints, so a restored sampler
continues exactly where the saved one stopped.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from hrm_jax.data import puzzles
from hrm_jax.data import seeding
from hrm_jax.data.errors import DataError


def _convert_labels(labels: np.ndarray, ignore_label_id) -> np.ndarray:
  labels = labels.astype(np.int32)
  if ignore_label_id is not None:
    labels[labels == ignore_label_id] = puzzles.IGNORE_LABEL_ID
  return labels


def _local_rows(global_batch_size: int, process_index: int,
                process_count: int) -> slice:
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by "
                     f"{process_count} processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in "
                     f"[0, {process_count})")
  per = global_batch_size // process_count
  return slice(process_index * per, (process_index + 1) * per)


class TrainSampler:
  """Infinite iterator of host-local training batches (numpy dicts)."""

  def __init__(self, split: puzzles.PuzzleSplit, global_batch_size: int,
               seed: int, process_index: int = 0, process_count: int = 1):
    self._split = split
    self._batch_size = int(global_batch_size)
    self._seed = int(seed)
    self._rows = _local_rows(self._batch_size, process_index, process_count)
    self._puzzle_sizes = np.diff(split.puzzle_indices)
    groups = split.group_indices
    self._group_lo, self._group_hi = groups[:-1], groups[1:]
    if split.num_groups == 0 or np.any(self._group_hi <= self._group_lo):
      raise DataError("every group needs at least one puzzle, and the split "
                      "at least one group")
    most = np.maximum.reduceat(self._puzzle_sizes, self._group_lo).sum()
    if most < self._batch_size:
      raise DataError(f"global batch {self._batch_size} is larger than one "
                      f"epoch can fill ({most} examples at most): use a "
                      "smaller batch or more data")
    self._epoch, self._batch, self._cursor = 0, 0, 0
    self._plan = None  # (epoch, chosen puzzle per position, cumsum sizes)

  @property
  def epoch(self) -> int:
    return self._epoch

  def get_state(self) -> dict:
    return {"seed": self._seed, "epoch": self._epoch,
            "batch_in_epoch": self._batch, "group_cursor": self._cursor,
            "global_batch_size": self._batch_size,
            "num_groups": self._split.num_groups}

  def set_state(self, state: dict) -> None:
    for key, mine in (("seed", self._seed),
                      ("global_batch_size", self._batch_size),
                      ("num_groups", self._split.num_groups)):
      if int(state[key]) != mine:
        raise ValueError(f"sampler state has {key}={state[key]}, this "
                         f"sampler has {mine}; cannot resume exactly")
    self._epoch = int(state["epoch"])
    self._batch = int(state["batch_in_epoch"])
    self._cursor = int(state["group_cursor"])

  def __iter__(self) -> Iterator[dict]:
    return self

  def _epoch_plan(self):
    if self._plan is None or self._plan[0] != self._epoch:
      rng = seeding.rng(self._seed, "train-epoch", self._epoch)
      order = rng.permutation(self._split.num_groups)
      lo, hi = self._group_lo[order], self._group_hi[order]
      chosen = lo + (rng.random(order.size) * (hi - lo)).astype(np.int64)
      chosen = np.minimum(chosen, hi - 1)  # Guards float rounding at 1.0.
      csum = np.concatenate([[0], np.cumsum(self._puzzle_sizes[chosen])])
      self._plan = (self._epoch, chosen, csum)
    return self._plan[1], self._plan[2]

  def _next_global(self):
    """(example index [B], puzzle index [B]) of the next global batch."""
    while True:
      chosen, csum = self._epoch_plan()
      start = self._cursor
      end = int(np.searchsorted(csum, csum[start] + self._batch_size, "left"))
      if end < len(csum):
        break
      self._epoch, self._batch, self._cursor = self._epoch + 1, 0, 0
    picked = chosen[start:end]
    sizes = self._puzzle_sizes[picked]
    seg = np.repeat(np.arange(picked.size), sizes)
    offset = np.arange(seg.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    keys = seeding.rng(self._seed, "train-batch", self._epoch,
                       self._batch).random(seg.size)
    order = np.lexsort((keys, seg))[:self._batch_size]  # Shuffle per puzzle.
    examples = self._split.puzzle_indices[picked[seg[order]]] + offset[order]
    self._cursor, self._batch = end, self._batch + 1
    return examples, picked[seg[order]]

  def __next__(self) -> dict:
    examples, puzzle = self._next_global()
    examples, puzzle = examples[self._rows], puzzle[self._rows]
    split = self._split
    return {
        "inputs": split.inputs[examples].astype(np.int32),
        "labels": _convert_labels(split.labels[examples],
                                  split.metadata.ignore_label_id),
        "puzzle_identifiers": split.puzzle_identifiers[puzzle].astype(
            np.int32),
    }


def eval_batches(split: puzzles.PuzzleSplit, global_batch_size: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """All examples in order, in global batches; the last one padded.

  Padding rows: inputs = pad id (0), labels = -100, puzzle id 0 (blank),
  example_index = -1.
  """
  rows = _local_rows(global_batch_size, process_index, process_count)
  example_ids = split.example_puzzle_identifiers()
  pad = split.metadata.pad_id
  for start in range(0, split.num_examples, global_batch_size):
    index = np.arange(start, start + global_batch_size, dtype=np.int64)
    index[index >= split.num_examples] = -1
    index = index[rows]
    valid = index >= 0
    safe = np.where(valid, index, 0)
    inputs = split.inputs[safe].astype(np.int32)
    inputs[~valid] = pad
    labels = _convert_labels(split.labels[safe],
                             split.metadata.ignore_label_id)
    labels[~valid] = puzzles.IGNORE_LABEL_ID
    ids = np.where(valid, example_ids[safe],
                   puzzles.BLANK_IDENTIFIER_ID).astype(np.int32)
    yield {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids,
           "example_index": index}
