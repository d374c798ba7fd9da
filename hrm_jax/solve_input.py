"""The puzzle given on `hrm_jax.solve`'s command line, parsed and checked.

One function per flag (--sudoku, --maze, --arc) turns what the user typed
into the arrays the model reads, or raises `SolveError` with a message that
names the flag and the fix: solve parses the puzzle before it loads a model,
so malformed input fails in a second. The encodings themselves are the
families' (`hrm_jax.data.sudoku`, `maze`, `arc_tasks`).
"""
from __future__ import annotations

import json
import os

import numpy as np

from hrm_jax.data import arc_tasks
from hrm_jax.data import errors
from hrm_jax.data import maze as maze_data
from hrm_jax.data import sudoku as sudoku_data
from hrm_jax.data import sudoku_solver
from hrm_jax.inference import InferenceError as SolveError


def parse_sudoku(text: str) -> np.ndarray:
  """Row-major board text -> int8 [n, n] digits (0 = blank).

  Raises:
    SolveError: wrong length, bad character, or givens that break the rules.
  """
  cells = "".join(text.split())
  side = sudoku_data.board_side(len(cells))
  if side is None:
    raise SolveError(
        f"--sudoku has {len(cells)} characters; expected 81 (9x9), 36 (6x6) or "
        "16 (4x4) cells, row by row, '.' or '0' for blanks.")
  try:
    board = sudoku_data.parse_board(cells, side, path="--sudoku")
  except errors.DataError as e:
    raise SolveError(str(e).replace("--sudoku row 1: ", "--sudoku: ")) from None
  if not np.any(board == 0):
    raise SolveError("--sudoku has no blank cell: nothing to solve.")
  clash = _given_clash(board)
  if clash:
    raise SolveError(f"--sudoku breaks the rules: {clash}.")
  if sudoku_solver.count_solutions(board, limit=1) == 0:
    raise SolveError("--sudoku has no solution (the givens are consistent cell by "
                     "cell but cannot be completed).")
  return board


def _given_clash(board: np.ndarray) -> str | None:
  """"row 2 repeats 5" for the first unit repeating a given digit, else None."""
  n = board.shape[0]
  geo = sudoku_solver.geometry_for(n)
  stacks = n // geo.box_cols  # boxes per band
  units = [(f"row {r + 1}", board[r]) for r in range(n)]
  units += [(f"column {c + 1}", board[:, c]) for c in range(n)]
  for b in range(n):
    band, stack = divmod(b, stacks)
    units.append((f"box {b + 1}",
                  board[band * geo.box_rows:(band + 1) * geo.box_rows,
                        stack * geo.box_cols:(stack + 1) * geo.box_cols]))
  for name, unit in units:
    digits, counts = np.unique(unit[unit > 0], return_counts=True)
    if np.any(counts > 1):
      return f"{name} repeats {digits[counts.argmax()]}"
  return None


def parse_maze(path: str) -> np.ndarray:
  """A maze text file -> uint8 [N, N] tokens (one S, one G, square).

  Raises:
    SolveError: missing file, ragged or non-square rows, bad characters, not
      exactly one S and one G, a G that S cannot reach, or 'o' cells.
  """
  if not os.path.isfile(path):
    raise SolveError(f"--maze file {path!r} not found.")
  with open(path, encoding="utf-8", errors="replace") as f:
    rows = f.read().splitlines()
  while rows and not rows[-1].strip():  # trailing blank lines are not rows
    rows.pop()
  if not rows:
    raise SolveError(f"--maze file {path!r} is empty.")
  widths = sorted({len(r) for r in rows})
  if len(widths) != 1:
    short = min(range(len(rows)), key=lambda i: (len(rows[i]) == len(rows[0]), i))
    raise SolveError(f"--maze {path!r}: ragged rows (lengths {widths}; e.g. row "
                     f"{short + 1} has {len(rows[short])} characters, row 1 has "
                     f"{len(rows[0])}); every row must be equally long.")
  if widths[0] != len(rows):
    raise SolveError(f"--maze {path!r}: {len(rows)} rows of {widths[0]} characters; "
                     "the maze must be square.")
  tokens = []
  for i, row in enumerate(rows):
    try:
      tokens.append(maze_data.encode(row))
    except errors.DataError as e:
      raise SolveError(f"--maze {path!r} row {i + 1}: {e}") from None
  grid = np.stack(tokens)
  if np.any(grid == maze_data.PATH):
    raise SolveError(f"--maze {path!r} already has 'o' path cells; give the maze "
                     "without a path.")
  try:
    maze_data.shortest_path_label(grid)  # checks one S, one G, G reachable
  except errors.DataError as e:
    raise SolveError(f"--maze {path!r}: {e}.") from None
  return grid


def parse_arc(path: str) -> tuple[arc_tasks.Task, list[bool]]:
  """An ARC task file -> (task, whether each test pair came with an output).

  The task id is the file name without .json (ARC's convention), which is how
  the task's puzzle identifiers are named.
  """
  if not os.path.isfile(path):
    raise SolveError(f"--arc file {path!r} not found.")
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise SolveError(f"--arc {path!r} is not valid JSON: {e}") from None
  task_id = os.path.splitext(os.path.basename(path))[0]
  try:
    task = arc_tasks.parse_task(obj, task_id, "", f"--arc {path!r}",
                               test_outputs_required=False)
  except errors.DataError as e:
    raise SolveError(str(e)) from None
  if not task.test:
    raise SolveError(f"--arc {path!r} has no test inputs to solve.")
  return task, [output is not None for _, output in task.test]
