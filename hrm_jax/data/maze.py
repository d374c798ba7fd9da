"""Maze: charset encoding, Maze-Hard CSV reader and a seeded maze generator.

Encoding (reference §5.4): characters "# SGo" -> ids 1..5 (wall, open, start,
goal, path), PAD 0, row-major; vocab 6, seq N*N (900 for 30x30). The input is
the maze with S and G; the label is the same maze with the cells strictly
between S and G on the shortest path marked "o". `ignore_label_id` is 0.

Generator (ours; the paper used Lehnert et al.'s, which is not public):
  1. carve a perfect maze (randomised depth-first search) on the odd
     coordinates of an odd-sided square (N, or N-1 placed at a random offset
     for even N), walls everywhere else;
  2. open each remaining wall between two corridor cells with probability
     `loop_fraction`, which adds loops and alternative routes;
  3. put S on a random open cell and G on a random open cell whose shortest
     path from S has more than `min_path_length` moves *and* is the only
     shortest path (so the label is well defined); retry otherwise.
Optional augmentation: all 8 dihedral transforms of each train maze in one
group (the reference's `--aug`, off by default as in the paper).
"""

from __future__ import annotations

import collections
from typing import Iterator

import numpy as np

from hrm_jax.data import dihedral
from hrm_jax.data import puzzles
from hrm_jax.data import qa_csv
from hrm_jax.data import seeding
from hrm_jax.data.errors import DataError
from hrm_jax.data.errors import where

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
VOCAB_SIZE = len(CHARSET) + 1
DEFAULT_TEST_SIZE = 1000  # Generated test mazes when test_size is -1.
# Default `min_path_length` per side when the config says -1.
DEFAULT_MIN_PATH_LENGTH = {7: 8, 9: 12, 11: 18, 30: 110}
_LUT = np.zeros(256, np.uint8)
for _i, _c in enumerate(CHARSET):
  _LUT[ord(_c)] = _i + 1


def encode(text: str) -> np.ndarray:
  """Maze string -> uint8 tokens; raises DataError on unknown characters."""
  raw = np.frombuffer(text.encode("latin-1", "replace"), np.uint8)
  tokens = _LUT[raw]
  bad = np.flatnonzero(tokens == 0)
  if bad.size:
    raise DataError(f"unknown character {text[bad[0]]!r} at position "
                    f"{bad[0]} (allowed: {CHARSET!r})")
  return tokens


def decode(tokens: np.ndarray) -> str:
  tokens = np.asarray(tokens).reshape(-1)
  if np.any((tokens < 1) | (tokens > len(CHARSET))):
    raise DataError(f"token ids must be in 1..{len(CHARSET)}")
  return "".join(CHARSET[t - 1] for t in tokens.tolist())


# ------------------------------------------------------------- shortest paths


def bfs(grid: np.ndarray, start: tuple[int, int]):
  """Distances (-1 = unreachable) and shortest-path counts capped at 2."""
  h, w = grid.shape
  dist = np.full((h, w), -1, np.int32)
  count = np.zeros((h, w), np.int8)
  dist[start], count[start] = 0, 1
  passable = grid != WALL
  queue = collections.deque([start])
  while queue:
    r, c = queue.popleft()
    d = dist[r, c] + 1
    for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
      if 0 <= nr < h and 0 <= nc < w and passable[nr, nc]:
        if dist[nr, nc] < 0:
          dist[nr, nc] = d
          count[nr, nc] = count[r, c]
          queue.append((nr, nc))
        elif dist[nr, nc] == d:
          count[nr, nc] = min(2, count[nr, nc] + count[r, c])
  return dist, count


def shortest_path_label(grid: np.ndarray) -> tuple[np.ndarray, int, int]:
  """Label grid with the path marked, the path length and #shortest paths.

  `grid` is an input maze (tokens, 2-D) with one START and one GOAL. The
  count is capped at 2; the label follows the lexicographically first
  (up, down, left, right from G) path when it is not unique.
  """
  start, goal = _find(grid, START), _find(grid, GOAL)
  dist, count = bfs(grid, start)
  if dist[goal] < 0:
    raise DataError("goal is unreachable from start")
  label = grid.copy()
  r, c = goal
  while dist[r, c] > 1:
    for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
      if (0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1] and
          dist[nr, nc] == dist[r, c] - 1):
        r, c = nr, nc
        break
    label[r, c] = PATH
  return label, int(dist[goal]), int(count[goal])


def _find(grid, token):
  pos = np.argwhere(grid == token)
  if len(pos) != 1:
    raise DataError(f"expected exactly one {CHARSET[token - 1]!r}, found "
                    f"{len(pos)}")
  return tuple(int(v) for v in pos[0])


# ------------------------------------------------------------------ generator


def _carve(m: int, loop_fraction: float, rng: np.random.Generator):
  """Perfect maze on an odd m x m square, plus random extra openings."""
  grid = np.full((m, m), WALL, np.uint8)
  cells = (m - 1) // 2
  seen = np.zeros((cells, cells), bool)
  start = (int(rng.integers(cells)), int(rng.integers(cells)))
  stack = [start]
  seen[start] = True
  grid[2 * start[0] + 1, 2 * start[1] + 1] = OPEN
  while stack:
    r, c = stack[-1]
    options = [(r + dr, c + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
               if 0 <= r + dr < cells and 0 <= c + dc < cells
               and not seen[r + dr, c + dc]]
    if not options:
      stack.pop()
      continue
    nr, nc = options[int(rng.integers(len(options)))]
    seen[nr, nc] = True
    grid[2 * nr + 1, 2 * nc + 1] = OPEN
    grid[r + nr + 1, c + nc + 1] = OPEN  # The wall between the two cells.
    stack.append((nr, nc))
  if loop_fraction > 0:
    interior = np.zeros((m, m), bool)
    interior[1:-1, 1:-1] = True
    odd = np.arange(m) % 2 == 1
    between = interior & (odd[:, None] ^ odd[None, :])  # walls between cells
    opened = between & (rng.random((m, m)) < loop_fraction)
    grid[opened] = OPEN
  return grid


def make_maze(size: int, min_path_length: int, loop_fraction: float,
              rng: np.random.Generator, tries: int = 20):
  """One maze with a unique shortest path of > min_path_length moves.

  Returns (input_grid, label_grid, path_length) as uint8 token grids, or None
  if `tries` start cells found no suitable goal (caller draws a new maze).
  """
  m = size if size % 2 else size - 1
  grid = np.full((size, size), WALL, np.uint8)
  oy, ox = (int(rng.integers(size - m + 1)) for _ in range(2))
  grid[oy:oy + m, ox:ox + m] = _carve(m, loop_fraction, rng)
  open_cells = np.argwhere(grid == OPEN)
  for _ in range(tries):
    start = tuple(open_cells[rng.integers(len(open_cells))])
    dist, count = bfs(grid, start)
    goals = np.argwhere((dist > min_path_length) & (count == 1))
    if len(goals):
      goal = tuple(goals[rng.integers(len(goals))])
      maze = grid.copy()
      maze[start], maze[goal] = START, GOAL
      label, length, _ = shortest_path_label(maze)
      return maze, label, length
  return None


def generate(size: int, count: int, min_path_length: int,
             loop_fraction: float, seed: int, tag: str):
  """`count` mazes; maze k is drawn from rng(seed, "maze", tag, k)."""
  inputs, labels, lengths, k = [], [], [], 0
  while len(inputs) < count:
    made = make_maze(size, min_path_length, loop_fraction,
                     seeding.rng(seed, "maze", tag, k))
    k += 1
    if made is not None:
      inputs.append(made[0].reshape(-1))
      labels.append(made[1].reshape(-1))
      lengths.append(made[2])
  empty = np.zeros((0, size * size), np.uint8)
  return (np.stack(inputs) if inputs else empty,
          np.stack(labels) if labels else empty, np.array(lengths, np.int64))


# ---------------------------------------------------------------------- CSV


def read_csv(path: str, size: int = 0, limit: int = 0, seed: int = 0,
             tag: str = ""):
  """Reads a Maze-Hard CSV (`source,q,a,rating`) into token arrays [N, S].

  Every data row is checked (field count, length, characters, and a label
  that only marks open cells 'o'), sampled or not; messages name the file,
  its line ("row") and the CSV column. `size` 0 infers the side from the
  first row; `limit` > 0 keeps a seeded subset of that many rows.
  """
  inputs, labels = [], []
  with qa_csv.open_csv(path, "maze") as (reader, header, qi, ai):
    for row in reader:
      loc = where(path, f"row {reader.line_num}")
      if len(row) != len(header):
        raise DataError(f"{loc}expected {len(header)} fields, got {len(row)}")
      size = size or int(round(np.sqrt(len(row[qi]))))
      tokens = []
      for column, text in (("q", row[qi]), ("a", row[ai])):
        if len(text) != size * size:
          raise DataError(f"{loc}expected {size * size} characters in column "
                          f"{column!r}, got {len(text)}")
        try:
          tokens.append(encode(text))
        except DataError as e:
          raise DataError(f"{loc}{e} in column {column!r}") from None
      q, a = tokens
      bad = np.flatnonzero((q != a) & ~((q == OPEN) & (a == PATH)))
      if bad.size:
        k = int(bad[0])
        raise DataError(
            f"{loc}label differs from the maze outside open cells marked "
            f"'o': position {k} (grid row {k // size + 1}, column "
            f"{k % size + 1}) is {CHARSET[q[k] - 1]!r} in column 'q' but "
            f"{CHARSET[a[k] - 1]!r} in column 'a'")
      inputs.append(q)
      labels.append(a)
  if not inputs:
    raise DataError(f"{path}: no data rows (only the header); add one maze "
                    "per row or point the source elsewhere")
  inputs, labels = np.array(inputs, np.uint8), np.array(labels, np.uint8)
  if 0 < limit < len(inputs):
    keep = np.sort(seeding.rng(seed, "subsample", tag).choice(
        len(inputs), limit, replace=False))
    inputs, labels = inputs[keep], labels[keep]
  return inputs, labels


# ---------------------------------------------------------------------- plan


def plan(cfg, progress=print) -> puzzles.DatasetPlan:
  """Reads or generates the mazes; dihedral variants are made lazily."""
  size, source = cfg.grid_size, cfg.source
  from_csv = source.startswith(("csv:", "hf:"))
  sizes = {"train": cfg.train_size,
           "test": cfg.test_size if cfg.test_size >= 0 else
                   (0 if from_csv else DEFAULT_TEST_SIZE)}
  if from_csv:
    paths = qa_csv.split_paths(source)
    data = {s: read_csv(paths[s], size, sizes[s], cfg.seed, s)
            for s in ("train", "test")}
  elif source == "generate":
    min_len = cfg.min_path_length
    if min_len < 0:
      min_len = DEFAULT_MIN_PATH_LENGTH.get(size, 2 * size)
    data = {}
    for s in ("train", "test"):
      progress(f"generating {sizes[s]} {size}x{size} mazes "
               f"({s}, path > {min_len})")
      data[s] = generate(size, sizes[s], min_len,
                         cfg.loop_fraction, cfg.seed, s)[:2]
  else:
    raise DataError(f"unknown maze source {source!r}; use 'generate', "
                    "'csv:<dir>', 'hf:<repo>' or 'npy:<dir>'")
  seq_len = data["train"][0].shape[1]

  def make_groups(split: str) -> Iterator[puzzles.Group]:
    inputs, labels = data[split]
    if split == "test" or not cfg.dihedral_aug:
      yield from puzzles.single_example_groups(inputs, labels)
      return
    side = int(round(np.sqrt(seq_len)))
    for x, y in zip(inputs, labels):
      xs = [dihedral.transform(x.reshape(side, side), t).reshape(-1)
            for t in range(dihedral.NUM_TRANSFORMS)]
      ys = [dihedral.transform(y.reshape(side, side), t).reshape(-1)
            for t in range(dihedral.NUM_TRANSFORMS)]
      k = dihedral.NUM_TRANSFORMS
      yield puzzles.Group(np.stack(xs), np.stack(ys), np.zeros(k, np.int32),
                          np.ones(k, np.int32))

  return puzzles.DatasetPlan(
      vocab_size=VOCAB_SIZE, seq_len=seq_len, ignore_label_id=0,
      identifiers=[puzzles.BLANK_IDENTIFIER],
      num_groups={s: len(data[s][0]) for s in data},
      make_groups=make_groups)


def path_problem(maze_NxN: np.ndarray, answer_NxN: np.ndarray) -> str | None:
  """Why `answer` is not a solution of `maze` (None if it is): the task's rule.

  A solution equals the maze except open cells marked "o", and those cells are
  exactly a shortest path from S to G: S reaches G through them in as few moves
  as the maze allows, and no other cell is marked. (When the maze has several
  shortest paths any one of them is a solution; the generator keeps mazes with
  one.) Both are token grids.
  """
  maze_NxN, answer_NxN = np.asarray(maze_NxN), np.asarray(answer_NxN)
  changed = maze_NxN != answer_NxN
  bad = changed & ~((maze_NxN == OPEN) & (answer_NxN == PATH))
  if bad.any():
    r, c = (int(v) for v in np.argwhere(bad)[0])
    return (f"{int(bad.sum())} cell(s) differ from the maze other than open cells "
            f"marked 'o' (first at row {r + 1}, column {c + 1})")
  # Walk S -> G through path cells only: everything else becomes a wall.
  route = np.where(np.isin(answer_NxN, (START, GOAL, PATH)), answer_NxN,
                   WALL).astype(np.uint8)
  start, goal = _find(route, START), _find(route, GOAL)
  moves = int(bfs(route, start)[0][goal])
  if moves < 0:
    return "the 'o' cells do not connect S to G"
  shortest = int(bfs(maze_NxN, start)[0][goal])
  if moves > shortest:
    return (f"the 'o' cells join S to G in {moves} moves, not a shortest path "
            f"({shortest} moves)")
  extra = int(np.sum(answer_NxN == PATH)) - (shortest - 1)
  if extra > 0:
    return (f"{extra} 'o' cell(s) beyond a shortest path from S to G "
            f"({shortest - 1} cells marked on it)")
  return None


# --------------------------------------------------------- family interface
# (what `hrm_jax.data.families` promises every family provides)

NAME = "maze"


def configure(c) -> None:
  """Adds the maze fields and their paper-scale defaults to a data config."""
  # "generate" (offline), or "csv:<dir>" / "hf:sapientinc/maze-30x30-hard-1k".
  c.source = "generate"
  c.grid_size = 30  # Side of the square maze (CSV: must match the data).
  c.train_size = 1000  # Train mazes (CSV: 0 = all rows).
  c.test_size = -1  # -1 = source default (CSV: all; generate: 1000).
  # Generated mazes keep only shortest paths with more moves than this;
  # -1 = 110 for 30x30 (Maze-Hard) and 8/12/18 for 7/9/11.
  c.min_path_length = -1
  # Generator: probability of opening each inner wall after carving a
  # perfect maze (adds loops; the label stays a unique shortest path).
  c.loop_fraction = 0.05
  # The reference's --aug: all 8 dihedral variants of each train maze
  # (off in the paper).
  c.dihedral_aug = False


def shape(cfg) -> puzzles.DatasetShape:
  return puzzles.DatasetShape(vocab_size=VOCAB_SIZE, seq_len=int(cfg.grid_size) ** 2,
                              num_puzzle_identifiers=1)


def encodes(vocab: int, seq_len: int) -> bool:
  side = int(round(np.sqrt(seq_len)))
  return vocab == VOCAB_SIZE and side * side == seq_len


def describe(seq_len: int) -> str:
  side = int(round(np.sqrt(seq_len)))
  return f"{side}x{side} maze ({seq_len} cells)"


def check_answer(inputs_S: np.ndarray, prediction_S: np.ndarray) -> str | None:
  """Why `prediction` is not a shortest path from S to G (None: it is; `path_problem`)."""
  side = int(round(np.sqrt(np.asarray(inputs_S).size)))
  grid = np.asarray(inputs_S).reshape(side, side)
  answer = np.asarray(prediction_S).reshape(side, side)
  if not np.all((answer >= 1) & (answer <= len(CHARSET))):
    return "the model output PAD tokens"
  return path_problem(grid, answer)
