"""Puzzle families: the one registry of what a family is (`config.data.family`).

A family is one module (`sudoku`, `maze`, `arc`) that provides, under these
names:

  NAME                         the family's key in this registry
  configure(c)                 adds the family's fields and defaults to a data ConfigDict
  shape(cfg) -> DatasetShape   vocabulary, length and puzzle-id count, without building
  plan(cfg, progress)          reads or generates the data (the TFDS builder's input)
  describe(seq_len) -> str     "6x6 Sudoku (36 cells)", for messages
  encodes(vocab, seq_len)      whether weights of this shape can be this family's
  check_answer(inputs_S, prediction_S) -> str | None
                               why a prediction is not a valid answer (None = valid);
                               None instead of a function when the family has no
                               cheap rule check (ARC)

Everything that depends on the family (builders, compile checks, `solve`,
`visualize`, answer checkers) looks these up here instead of branching on the
name; a new family is one module plus one entry in `FAMILIES`.
"""

from __future__ import annotations

import types

from hrm_jax.data import arc
from hrm_jax.data import maze
from hrm_jax.data import sudoku

FAMILIES: dict[str, types.ModuleType] = {m.NAME: m for m in (sudoku, maze, arc)}


def get(name: str) -> types.ModuleType:
  """The family module called `name`; unknown names list the known ones."""
  if name not in FAMILIES:
    raise ValueError(f"unknown puzzle family {name!r} (config.data.family); use one of "
                     f"{sorted(FAMILIES)}")
  return FAMILIES[name]


def matching(vocab_size: int, seq_len: int) -> list[str]:
  """Families whose encoding has this vocabulary at this length (for weights
  without a dataset, e.g. converted checkpoints)."""
  out = []
  for name, module in FAMILIES.items():
    try:
      if module.encodes(vocab_size, seq_len):
        out.append(name)
    except ValueError:
      continue
  return out
