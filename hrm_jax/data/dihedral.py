"""The 8 symmetries of the square, numbered exactly as the reference.

0 identity, 1 rot90 (counter-clockwise, `np.rot90`), 2 rot180, 3 rot270,
4 fliplr, 5 flipud, 6 transpose, 7 anti-transpose (`fliplr(rot90(x))`).
ARC variant names store this id, so the numbering is part of the data format.
"""

import numpy as np

NUM_TRANSFORMS = 8
INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)  # transform(INVERSE[t]) undoes t.


def transform(grid: np.ndarray, t: int) -> np.ndarray:
  """Applies dihedral transform `t` to the first two axes of `grid`."""
  if t == 0:
    return grid
  if t == 1:
    return np.rot90(grid, 1)
  if t == 2:
    return np.rot90(grid, 2)
  if t == 3:
    return np.rot90(grid, 3)
  if t == 4:
    return np.fliplr(grid)
  if t == 5:
    return np.flipud(grid)
  if t == 6:
    return np.swapaxes(grid, 0, 1)
  if t == 7:
    return np.fliplr(np.rot90(grid, 1))
  raise ValueError(f"dihedral transform id must be in 0..7, got {t}")


def inverse(grid: np.ndarray, t: int) -> np.ndarray:
  return transform(grid, INVERSE[t])
