"""Host-local batches: the training stream (reference §5.2) and the eval order.

Training follows the reference's `_iter_train`/`_sample_batch`:
  * an *iteration* (the reference's `epochs_per_iter`, its `eval_interval`)
    chains `epochs_per_iteration` epochs; an *epoch* is one permutation of the
    groups with one random puzzle chosen per group;
  * batches are packed by walking that chain, taking each chosen puzzle's
    examples in random order; the puzzle that overflows a batch is truncated
    (its remaining examples are skipped) and the next batch starts at the next
    group, so batches run across epoch seams;
  * only the final, incomplete batch of an iteration is dropped.
For Sudoku/Maze-1k (1000 single-example groups, batch 768, 2000 epochs per
iteration) an iteration is 2604 batches and every group is seen 1999 or 2000
times in it, as in the reference.

Where we differ from the reference, and why:
  * The draws are seeded by name, not by call order: epoch e (counted from
    the start of training, e = iteration * epochs_per_iteration + k) draws its
    permutation and puzzle choices from `seeding.rng(seed, "train-epoch", e)`,
    and batch b of iteration i orders each puzzle's examples with
    `seeding.rng(seed, "train-batch", i, b)`. The reference uses
    Philox(seed + iteration) for groups and puzzles and the global, unseeded
    `np.random.choice` for examples, so its stream is not reproducible and
    ours is not bit-identical to it; the distributions are the same (tests
    compare them with a transcription of the reference). Our streams are
    machine- and process-count-independent and can be resumed exactly.
  * A batch larger than a whole iteration can hold (the largest puzzle of
    every group, every epoch) is an error at construction, where the
    reference would silently train zero steps. An iteration whose draws
    happen to hold less than one batch (possible only when the smallest
    puzzles could not fill one) yields no batch, as in the reference, and
    the stream moves on to the next iteration; after
    `_MAX_EMPTY_ITERATIONS` such iterations in a row it raises DataError.
  * Puzzles are drawn per epoch up front instead of when a group is reached;
    as every draw is independent this changes nothing in distribution.

Every process computes the same global batch and keeps rows
[pi*B/pc, (pi+1)*B/pc), gathering only those. The iterator state is
(iteration, batch in iteration, position in the iteration's group chain):
plain ints, so a restored sampler continues exactly where the saved one
stopped, also across epoch and iteration seams.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from hrm_jax.data import puzzles
from hrm_jax.data import seeding
from hrm_jax.data.errors import DataError


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


def iteration_batches(examples_per_epoch: int, epochs_per_iteration: int,
                      global_batch_size: int) -> int:
  """Batches in one iteration of a dataset whose every puzzle has one example.

  Sudoku and Maze (any augmentation) are such datasets: every group visit
  adds exactly one example, so no draw changes the count and it is known from
  the config alone (examples_per_epoch = number of training groups). E.g.
  Sudoku/Maze-1k: 1000 * 2000 // 768 = 2604 per iteration, 26,040 updates in
  10 iterations. The reference runs the same 26,040 but sizes its LR
  schedule by the estimate int(20000 * 1000 / 768) = 26,041. Datasets with
  multi-example puzzles (ARC) need `TrainSampler.batches_in_iteration`.

  Args:
    examples_per_epoch: Examples one epoch yields (groups x 1).
    epochs_per_iteration: Epochs chained per iteration (eval interval).
    global_batch_size: Examples per global batch.

  Returns:
    The number of full batches; the remainder (< one batch) is dropped.
  """
  for name, value in (("examples_per_epoch", examples_per_epoch),
                      ("epochs_per_iteration", epochs_per_iteration),
                      ("global_batch_size", global_batch_size)):
    if int(value) < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  return (int(examples_per_epoch) * int(epochs_per_iteration) //
          int(global_batch_size))


_STATE_DATASET_KEYS = ("seed", "global_batch_size", "epochs_per_iteration",
                       "num_groups", "num_puzzles", "num_examples")
_STATE_POSITION_KEYS = ("iteration", "batch_in_iteration", "position")
_PLAN_CACHE = 4  # Epoch plans kept: a batch rarely spans more epochs.
_MAX_EMPTY_ITERATIONS = 1000  # Consecutive batch-less iterations tolerated.


class TrainSampler:
  """Infinite iterator of host-local training batches (numpy dicts).

  Yields iteration after iteration, each `batches_in_iteration(i)` batches of
  {"inputs", "labels", "puzzle_identifiers"} (int32, local rows only). The
  `iteration` property advances as soon as an iteration's last batch has been
  returned, so a trainer can evaluate when it changes.

  Args:
    split: The training split.
    global_batch_size: Examples per global batch (all processes together).
    seed: Seeds every draw (see the module docstring).
    process_index, process_count: This process's rows of each global batch.
    epochs_per_iteration: Epochs chained per iteration: the reference's
      `eval_interval` (the default 1 packs each epoch on its own).

  Raises:
    DataError: if no iteration can hold one batch.
  """

  def __init__(self, split: puzzles.PuzzleSplit, global_batch_size: int,
               seed: int, process_index: int = 0, process_count: int = 1,
               epochs_per_iteration: int = 1):
    self._split = split
    self._batch_size = int(global_batch_size)
    self._seed = int(seed)
    self._epochs = int(epochs_per_iteration)
    if self._batch_size < 1 or self._epochs < 1:
      raise ValueError(f"global_batch_size ({global_batch_size}) and "
                       f"epochs_per_iteration ({epochs_per_iteration}) must "
                       "be >= 1")
    self._rows = _local_rows(self._batch_size, process_index, process_count)
    self._puzzle_sizes = np.diff(split.puzzle_indices)
    groups = split.group_indices
    self._group_lo, self._group_hi = groups[:-1], groups[1:]
    if split.num_groups == 0 or np.any(self._group_hi <= self._group_lo):
      raise DataError("every group needs at least one puzzle, and the split "
                      "at least one group")
    most = int(np.maximum.reduceat(self._puzzle_sizes, self._group_lo).sum())
    if most * self._epochs < self._batch_size:
      raise DataError(
          f"global batch {self._batch_size} is larger than one iteration can "
          f"fill: {self._epochs} epoch(s) of {split.num_groups} groups hold at "
          f"most {most * self._epochs} examples; use a smaller batch, more "
          "epochs per iteration (eval interval) or more data")
    sizes = np.unique(self._puzzle_sizes)
    # Every group visit adds the same number of examples: the count is exact
    # without any draw (Sudoku, Maze).
    self._uniform_size = int(sizes[0]) if sizes.size == 1 else None
    self._iteration, self._batch, self._position = 0, 0, 0
    self._plans = {}  # global epoch -> (chosen puzzle per position, cumsum)
    self._counts = {}  # iteration -> batches_in_iteration

  @property
  def iteration(self) -> int:
    """The iteration the next batch belongs to (0-based)."""
    return self._iteration

  @property
  def batch_in_iteration(self) -> int:
    """Batches of the current iteration already returned."""
    return self._batch

  @property
  def epochs_per_iteration(self) -> int:
    return self._epochs

  @property
  def epoch(self) -> float:
    """Epochs consumed, as a float: group visits handed out / groups.

    A finished iteration counts as exactly `epochs_per_iteration` epochs (its
    dropped remainder, less than one batch, included), so the value at an
    iteration seam is an integer and matches the reference's
    `_iter_id * eval_interval`.
    """
    return (self._iteration * self._epochs +
            self._position / self._split.num_groups)

  def batches_in_iteration(self, iteration: int) -> int:
    """Exactly how many batches iteration `iteration` yields (maybe 0, see
    the module docstring).

    Walks the cumulative example counts of the iteration's epochs (no batch
    is gathered); for single-size puzzles it is closed-form. Cached.
    """
    iteration = int(iteration)
    if iteration < 0:
      raise ValueError(f"iteration must be >= 0, got {iteration}")
    if iteration not in self._counts:
      if self._uniform_size is not None:
        per_batch = -(-self._batch_size // self._uniform_size)  # groups
        count = self._epochs * self._split.num_groups // per_batch
      else:
        count, position = 0, 0
        while (found := self._walk(iteration, position, False)) is not None:
          position = found[0]
          count += 1
      self._counts[iteration] = count
    return self._counts[iteration]

  def get_state(self) -> dict:
    return {"seed": self._seed, "global_batch_size": self._batch_size,
            "epochs_per_iteration": self._epochs,
            "num_groups": self._split.num_groups,
            "num_puzzles": int(self._puzzle_sizes.size),
            "num_examples": self._split.num_examples,
            "iteration": self._iteration, "batch_in_iteration": self._batch,
            "position": self._position}

  def set_state(self, state: dict) -> None:
    """Continues from a `get_state()` of a sampler with the same settings."""
    missing = [k for k in _STATE_DATASET_KEYS + _STATE_POSITION_KEYS
               if k not in state]
    if missing:
      raise ValueError(
          f"sampler state lacks {missing} (saved by an older sampler that "
          "dropped a partial batch every epoch?); its stream cannot be "
          "continued exactly: restart training, or resume without the data "
          "state")
    mine = self.get_state()
    for key in _STATE_DATASET_KEYS:
      if int(state[key]) != mine[key]:
        raise ValueError(
            f"sampler state has {key}={state[key]}, this sampler has "
            f"{mine[key]}; cannot resume exactly: resume with the {key} of "
            "the saved run (same data, seed, batch size and eval interval)")
    iteration, batch = int(state["iteration"]), int(state["batch_in_iteration"])
    position = int(state["position"])
    start = batch == 0 and position == 0  # Also of an empty iteration.
    if (iteration < 0 or not 0 <= position < self._epochs *
        self._split.num_groups or not (
            start or 0 <= batch < self.batches_in_iteration(iteration))):
      raise ValueError(f"sampler state {dict(state)} is out of range for "
                       "this dataset; it was not written by this sampler")
    self._iteration, self._batch, self._position = iteration, batch, position

  def __iter__(self) -> Iterator[dict]:
    return self

  def _epoch_plan(self, epoch: int):
    """(chosen puzzle per position, cumulative example counts) of an epoch."""
    if epoch not in self._plans:
      if len(self._plans) >= _PLAN_CACHE:
        del self._plans[next(iter(self._plans))]  # Oldest first.
      rng = seeding.rng(self._seed, "train-epoch", epoch)
      order = rng.permutation(self._split.num_groups)
      lo, hi = self._group_lo[order], self._group_hi[order]
      chosen = lo + (rng.random(order.size) * (hi - lo)).astype(np.int64)
      chosen = np.minimum(chosen, hi - 1)  # Guards float rounding at 1.0.
      csum = np.concatenate([[0], np.cumsum(self._puzzle_sizes[chosen])])
      self._plans[epoch] = (chosen, csum)
    return self._plans[epoch]

  def _walk(self, iteration: int, position: int, collect: bool):
    """The batch that starts at `position` of `iteration`'s group chain.

    Adds group after group (across epoch seams) until B examples are reached,
    as `_sample_batch` does. Returns (position after it, chosen puzzles as a
    list of arrays, or None if not `collect`), or None when the rest of the
    iteration cannot fill a batch (the reference drops it).
    """
    num_groups = self._split.num_groups
    need, pieces = self._batch_size, [] if collect else None
    while position < self._epochs * num_groups:
      k, start = divmod(position, num_groups)
      chosen, csum = self._epoch_plan(iteration * self._epochs + k)
      have = int(csum[-1] - csum[start])
      if have >= need:
        end = int(np.searchsorted(csum, csum[start] + need, "left"))
        if collect:
          pieces.append(chosen[start:end])
        return k * num_groups + end, pieces
      if collect:
        pieces.append(chosen[start:])
      need -= have
      position = (k + 1) * num_groups
    return None

  def _next_global(self):
    """(example index [B], puzzle index [B]) of the next global batch."""
    skipped = 0
    while self.batches_in_iteration(self._iteration) == 0:
      skipped += 1
      if skipped > _MAX_EMPTY_ITERATIONS:
        raise DataError(
            f"{skipped - 1} iterations in a row held less than one global "
            f"batch of {self._batch_size} (iteration {self._iteration}); "
            "use a smaller batch or more epochs per iteration (eval interval)")
      self._iteration += 1
    found = self._walk(self._iteration, self._position, True)
    assert found is not None, "batches_in_iteration and _walk disagree"
    end, pieces = found
    picked = np.concatenate(pieces)
    sizes = self._puzzle_sizes[picked]
    seg = np.repeat(np.arange(picked.size), sizes)
    offset = np.arange(seg.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    keys = seeding.rng(self._seed, "train-batch", self._iteration,
                       self._batch).random(seg.size)
    # Random order within each puzzle; cutting at B truncates only the last
    # puzzle, to a random subset of its examples (the reference's choice).
    order = np.lexsort((keys, seg))[:self._batch_size]
    examples = self._split.puzzle_indices[picked[seg[order]]] + offset[order]
    self._batch += 1
    self._position = end
    if self._batch == self.batches_in_iteration(self._iteration):
      self._iteration, self._batch, self._position = self._iteration + 1, 0, 0
    return examples, picked[seg[order]]

  def __next__(self) -> dict:
    examples, puzzle = self._next_global()
    examples, puzzle = examples[self._rows], puzzle[self._rows]
    split = self._split
    return {
        "inputs": split.inputs[examples].astype(np.int32),
        "labels": puzzles.loss_labels(split.labels[examples],
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
    labels = puzzles.loss_labels(split.labels[safe],
                             split.metadata.ignore_label_id)
    labels[~valid] = puzzles.IGNORE_LABEL_ID
    ids = np.where(valid, example_ids[safe],
                   puzzles.BLANK_IDENTIFIER_ID).astype(np.int32)
    yield {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids,
           "example_index": index}
