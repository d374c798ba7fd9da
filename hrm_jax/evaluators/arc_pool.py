"""ARC's aggregated votes across a run's evaluations, and where they are kept.

TRM's `evaluators/arc.py` (`aggregated_voting=True`, its default) never clears
its predictions, so the pass@K it reports at evaluation i votes over the
predictions of evaluations 1..i: an ensemble of the run's (EMA) checkpoints,
ten by the end of a paper run. `config.eval.aggregate_votes` does the same
(`hrm_jax.evaluators.arc.Evaluator`); this module owns the saved pool.

Each evaluation of a run saves *its own* votes (not the running total) as
WORKDIR/arc_votes/step_<N>.npz, N the train step of the evaluated weights;
the pool of the evaluation of step s is the sum of the files of the steps
below s. So a resumed run reports what an uninterrupted one would:
  * the trainer saves the checkpoint of an evaluation step before evaluating
    it, and an evaluation cut short (or lost with its process) runs again on
    resume: it saved nothing, or its file is replaced, never added twice;
  * a run that falls back to an older checkpoint ignores the files of steps it
    has not reached again, and saving step s deletes those of later steps
    (they belong to the abandoned continuation);
  * the files do not grow with the pool (each holds one evaluation).
Process 0 writes (atomically: a temporary name, then a rename); every process
reads the same files (the workdir is shared by all processes, as orbax needs)
and computes the same pool. Without a workdir the files are kept in memory,
with the same rules.

File format (numpy .npz, compressed, no pickles): one row per distinct
candidate grid of one question (task, test input): `task` (index into
`tasks`), `test_index`, `count` (votes), `confidence_sum` (sum of the voters'
sigmoid(q_halt)), `shape` (rows, columns) and the grids' cells concatenated
row-major in `cells` (int8 colours).
"""
from __future__ import annotations

import io
import re

import jax
import numpy as np
from etils import epath

from hrm_jax import checkpoint, errors

DIRECTORY = "arc_votes"
FORMAT_VERSION = 1
_NAME = re.compile(r"step_(\d+)\.npz")
_FIELDS = ("format", "tasks", "task", "test_index", "count", "confidence_sum",
           "shape", "cells")


class CorruptVotesError(checkpoint.CorruptCheckpointError):
  """A saved vote file cannot be read (a runtime failure, as a corrupt checkpoint)."""


def encode(votes) -> bytes:
  """The .npz bytes of `votes` (an `arc.Votes` whose questions are (task, k))."""
  tasks, task_ids = [], {}
  rows = {name: [] for name in ("task", "test_index", "count", "confidence_sum", "shape")}
  cells = []
  for (task, k), grid, count, confidence_sum in votes.entries():
    rows["task"].append(task_ids.setdefault(task, len(task_ids)))
    if len(task_ids) > len(tasks):
      tasks.append(task)
    rows["test_index"].append(k)
    rows["count"].append(count)
    rows["confidence_sum"].append(confidence_sum)
    rows["shape"].append(grid.shape)
    cells.append(np.asarray(grid, np.int8).reshape(-1))
  buffer = io.BytesIO()
  np.savez_compressed(
      buffer, format=np.int32(FORMAT_VERSION), tasks=np.asarray(tasks, dtype=np.str_),
      task=np.asarray(rows["task"], np.int32), test_index=np.asarray(rows["test_index"], np.int32),
      count=np.asarray(rows["count"], np.int64),
      confidence_sum=np.asarray(rows["confidence_sum"], np.float64),
      shape=np.asarray(rows["shape"], np.int16).reshape(-1, 2),
      cells=np.concatenate(cells) if cells else np.zeros(0, np.int8))
  return buffer.getvalue()


def decode(blob: bytes, votes, source: str = "vote file") -> None:
  """Adds the votes of .npz bytes made by `encode` to `votes` (an `arc.Votes`).

  Raises:
    CorruptVotesError: `blob` is not such a file; the message names `source`.
  """
  def corrupt(why: str) -> CorruptVotesError:
    return CorruptVotesError(
        f"{source}: unreadable ARC vote file ({why}); restore it, or delete it to "
        "leave that evaluation out of the aggregated votes.")

  try:
    entries = _read(blob, corrupt)
  except CorruptVotesError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    # np.load raises many types for damaged archives (BadZipFile, EOFError, ...).
    raise corrupt(f"{type(e).__name__}: {errors.first_line(e, 120)}") from e
  for question, grid, count, confidence_sum in entries:  # all read: none added if corrupt
    votes.add_counted(question, grid, count, confidence_sum)


def _read(blob: bytes, corrupt) -> list:
  """The checked entries of a vote file (`corrupt(why)` makes the error to raise)."""
  with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
    missing = [f for f in _FIELDS if f not in npz.files]
    if missing:
      raise corrupt(f"missing {', '.join(missing)}")
    f = {name: npz[name] for name in _FIELDS}
  if int(f["format"]) != FORMAT_VERSION:
    raise corrupt(f"format {int(f['format'])}, this code reads {FORMAT_VERSION}")
  n, shapes = len(f["count"]), f["shape"]
  sizes = shapes.astype(np.int64).prod(axis=1) if shapes.ndim == 2 else np.zeros(0)
  if (shapes.ndim != 2 or (shapes < 0).any() or int(sizes.sum()) != len(f["cells"])
      or any(len(f[name]) != n for name in ("task", "test_index", "confidence_sum", "shape"))
      or (n and (f["task"].min() < 0 or f["task"].max() >= len(f["tasks"])))):
    raise corrupt("inconsistent arrays")
  ends = np.cumsum(sizes)
  return [((str(f["tasks"][f["task"][i]]), int(f["test_index"][i])),
           f["cells"][ends[i] - sizes[i]:ends[i]].reshape(tuple(shapes[i])),
           int(f["count"][i]), float(f["confidence_sum"][i])) for i in range(n)]


class VotePool:
  """The saved votes of a run's evaluations, one entry per train step.

  Args:
    workdir: the run's workdir (local or gs://); None keeps them in memory.
  """

  def __init__(self, workdir=None):
    self._dir = None if workdir is None else epath.Path(workdir) / DIRECTORY
    self._memory: dict[int, bytes] = {}

  def steps(self) -> list[int]:
    """The steps with saved votes, ascending."""
    if self._dir is None:
      return sorted(self._memory)
    if not self._dir.exists():
      return []
    return sorted(int(m.group(1)) for p in self._dir.iterdir()
                  if (m := _NAME.fullmatch(p.name)))

  def path(self, step: int) -> epath.Path:
    return self._dir / f"step_{int(step)}.npz"

  def load_into(self, votes, before: int | None = None) -> int:
    """Adds the saved votes of every step below `before` (None: all) to `votes`;
    returns how many evaluations were added."""
    chosen = [s for s in self.steps() if before is None or s < before]
    for s in chosen:
      if self._dir is None:
        decode(self._memory[s], votes, f"in-memory votes of step {s}")
      else:
        decode(self.path(s).read_bytes(), votes, str(self.path(s)))
    return len(chosen)

  def save(self, step: int, votes) -> None:
    """Saves the votes of the evaluation of `step` (replacing any of that step) and
    drops those of later steps. On a workdir only process 0 writes."""
    step = int(step)
    later = [s for s in self.steps() if s > step]
    if self._dir is None:
      self._memory[step] = encode(votes)
      for s in later:
        del self._memory[s]
      return
    if jax.process_index() != 0:
      return
    self._dir.mkdir(parents=True, exist_ok=True)
    temporary = self._dir / f".step_{step}.npz.tmp"
    temporary.write_bytes(encode(votes))
    temporary.replace(self.path(step))
    for s in later:
      self.path(s).unlink()
