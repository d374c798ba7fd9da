"""Bitmask backtracking Sudoku solver and hard-puzzle generator (any box shape).

The solver is deliberately simple and fixed, because its backtrack count *is*
the difficulty rating of generated puzzles (the analogue of the tdoku backtrack
count in Sudoku-Extreme's `rating` column):

  * candidates are bitmasks (bit d-1 = digit d);
  * propagation = naked singles only (a cell with one candidate is assigned,
    which removes that digit from its peers); no hidden singles or fancier
    techniques, so puzzles that need them force guesses;
  * branching on the unsolved cell with the fewest candidates (ties: lowest
    cell index), digits tried in ascending order;
  * `rating` = number of dead ends (contradictions) met before the first
    solution is found.

Generation (seeded, per puzzle, so the result does not depend on how many
worker processes run): fill a random complete grid, then remove cells in a
random order, keeping each removal only if the solution stays unique; stop at
`num_blanks` blanks or, when `num_blanks` is 0, at a minimal puzzle.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

_POPCOUNT = [bin(m).count("1") for m in range(1 << 16)]


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Board of side n = box_rows * box_cols, with box_rows x box_cols boxes."""
  box_rows: int
  box_cols: int

  @property
  def n(self) -> int:
    return self.box_rows * self.box_cols

  @property
  def cells(self) -> int:
    return self.n * self.n


def geometry_for(n: int) -> Geometry:
  """The box shape of an n x n board: 4 -> 2x2, 6 -> 2x3, 9 -> 3x3."""
  shapes = {4: (2, 2), 6: (2, 3), 9: (3, 3), 16: (4, 4)}
  if n not in shapes:
    raise ValueError(f"unsupported Sudoku size {n}; use one of "
                     f"{sorted(shapes)}")
  return Geometry(*shapes[n])


@functools.lru_cache(maxsize=None)
def _peers(geo: Geometry) -> tuple[tuple[int, ...], ...]:
  n = geo.n
  result = []
  for cell in range(n * n):
    r, c = divmod(cell, n)
    br, bc = r // geo.box_rows * geo.box_rows, c // geo.box_cols * geo.box_cols
    group = {r * n + k for k in range(n)} | {k * n + c for k in range(n)}
    group |= {(br + i) * n + bc + j
              for i in range(geo.box_rows) for j in range(geo.box_cols)}
    group.discard(cell)
    result.append(tuple(sorted(group)))
  return tuple(result)


class _Search:
  """One depth-first search; counts solutions (up to a limit) and dead ends."""

  def __init__(self, geo: Geometry, limit: int, rng=None):
    self.peers = _peers(geo)
    self.n = geo.n
    self.limit = limit
    self.rng = rng  # None: digits in ascending order; else shuffled per node.
    self.solutions: list[list[int]] = []
    self.backtracks = 0

  def assign(self, cand: list[int], cell: int, bit: int) -> bool:
    """Sets cell to the digit `bit` and propagates naked singles."""
    cand[cell] = bit
    stack = [(cell, bit)]
    peers = self.peers
    while stack:
      cell, bit = stack.pop()
      for p in peers[cell]:
        m = cand[p]
        if m & bit:
          m &= ~bit
          if not m:
            return False
          cand[p] = m
          if not m & (m - 1):
            stack.append((p, m))
    return True

  def run(self, cand: list[int]) -> None:
    if len(self.solutions) >= self.limit:
      return
    best, best_count = -1, 99
    for i, m in enumerate(cand):
      if m & (m - 1):
        k = _POPCOUNT[m]
        if k < best_count:
          best, best_count = i, k
          if k == 2:
            break
    if best < 0:
      self.solutions.append(cand)
      return
    m = cand[best]
    digits = range(1, self.n + 1)
    if self.rng is not None:
      digits = (self.rng.permutation(self.n) + 1).tolist()
    for d in digits:
      bit = 1 << (d - 1)
      if not m & bit:
        continue
      child = list(cand)
      if self.assign(child, best, bit):
        self.run(child)
        if len(self.solutions) >= self.limit:
          return
      else:
        self.backtracks += 1


def _initial(geo: Geometry, board: np.ndarray, search: _Search):
  """Candidate masks after placing the givens, or None on a contradiction."""
  full = (1 << geo.n) - 1
  cand = [full] * geo.cells
  for cell, d in enumerate(np.asarray(board).reshape(-1).tolist()):
    if d:
      bit = 1 << (d - 1)
      if not cand[cell] & bit or not search.assign(cand, cell, bit):
        return None
  return cand


def _to_board(geo: Geometry, cand: list[int]) -> np.ndarray:
  return np.array([m.bit_length() for m in cand], np.int8).reshape(geo.n, geo.n)


def solve(board: np.ndarray, limit: int = 2, geo: Geometry | None = None):
  """Solves an n x n board (0 = blank).

  Args:
    board: int array [n, n], digits 1..n, 0 for blanks.
    limit: stop after this many solutions (2 suffices to test uniqueness).
    geo: box geometry; derived from n when omitted.

  Returns:
    (solutions, backtracks): up to `limit` solved boards and the number of
    dead ends met, which for limit=1 is the documented difficulty rating.
  """
  board = np.asarray(board)
  geo = geo or geometry_for(board.shape[0])
  search = _Search(geo, limit)
  cand = _initial(geo, board, search)
  if cand is not None:
    search.run(cand)
  return [_to_board(geo, s) for s in search.solutions], search.backtracks


def rating(board: np.ndarray) -> int:
  """Backtracks needed by the fixed solver to find the first solution."""
  return solve(board, limit=1)[1]


def count_solutions(board: np.ndarray, limit: int = 2) -> int:
  return len(solve(board, limit=limit)[0])


def random_solution(geo: Geometry, rng: np.random.Generator) -> np.ndarray:
  """A random complete grid: depth-first fill, random digit order per node."""
  search = _Search(geo, 1, rng=rng)
  search.run([(1 << geo.n) - 1] * geo.cells)
  return _to_board(geo, search.solutions[0])


def _unique(geo: Geometry, board: list[int]) -> bool:
  search = _Search(geo, 2)
  cand = _initial(geo, np.asarray(board, np.int8), search)
  if cand is None:
    return False
  search.run(cand)
  return len(search.solutions) == 1


def make_puzzle(geo: Geometry, seed_seq, num_blanks: int = 0):
  """Generates one puzzle with a unique solution.

  Args:
    geo: board geometry.
    seed_seq: anything `np.random.default_rng` accepts; fully determines the
      output.
    num_blanks: blanks wanted; 0 = remove until the puzzle is minimal.

  Returns:
    (puzzle, solution, rating), or None if `num_blanks` could not be reached
    along this random removal order.
  """
  rng = np.random.default_rng(seed_seq)
  solution = random_solution(geo, rng)
  board = solution.reshape(-1).tolist()
  blanks = 0
  for cell in rng.permutation(geo.cells).tolist():
    if num_blanks and blanks >= num_blanks:
      break
    digit = board[cell]
    board[cell] = 0
    if _unique(geo, board):
      blanks += 1
    else:
      board[cell] = digit
  if num_blanks and blanks < num_blanks:
    return None
  puzzle = np.asarray(board, np.int8).reshape(geo.n, geo.n)
  return puzzle, solution, rating(puzzle)
