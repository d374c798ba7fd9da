"""The `source,q,a,rating` CSV files that Sudoku and Maze read.

sapientinc/sudoku-extreme and sapientinc/maze-30x30-hard-1k ship the same
layout: `train.csv` and `test.csv`, a header naming at least the columns `q`
(the puzzle) and `a` (its answer), one puzzle a row. This module owns what
the two families share about them: where the files are (`csv:<dir>` or
`hf:<repo_id>`), opening one with its header checked, and turning a data row
back into its file line for error messages. Parsing the cells is the
family's (`sudoku._read_csv`, `maze.read_csv`).
"""

from __future__ import annotations

import contextlib
import csv
import os
from typing import Iterator

from hrm_jax.data.errors import DataError

SPLITS = ("train", "test")


def fetch_hf(repo_id: str, filename: str) -> str:
  """Downloads (or finds in the Hugging Face cache) one file of a dataset repo."""
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        f"source 'hf:{repo_id}' needs huggingface_hub (pip install "
        "huggingface_hub), or download the CSVs yourself and use "
        "source='csv:<dir>'") from e
  return huggingface_hub.hf_hub_download(repo_id, filename,
                                         repo_type="dataset")


def split_paths(source: str) -> dict[str, str]:
  """"csv:<dir>" or "hf:<repo_id>" -> {"train": path, "test": path}."""
  if source.startswith("csv:"):
    root = os.path.expanduser(source[len("csv:"):])
    return {s: os.path.join(root, f"{s}.csv") for s in SPLITS}
  if source.startswith("hf:"):
    return {s: fetch_hf(source[len("hf:"):], f"{s}.csv") for s in SPLITS}
  raise DataError(f"{source!r} is not a CSV source; use 'csv:<dir>' or "
                  "'hf:<repo_id>'")


@contextlib.contextmanager
def open_csv(path: str, row_noun: str
             ) -> Iterator[tuple[Iterator[list[str]], list[str], int, int]]:
  """Opens a q/a CSV past its header: yields (reader, header, q column, a column).

  `row_noun` ("puzzle", "maze") words the message for an empty file. The
  reader's `line_num` is the file line of the row just read (header = 1).

  Raises:
    DataError: a missing file, no header, or a header without 'q' and 'a'.
  """
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header:
      raise DataError(f"{path}: empty file: no header and no data rows "
                      "(expected the header 'source,q,a,rating', then one "
                      f"{row_noun} per row)")
    if "q" not in header or "a" not in header:
      raise DataError(f"{path}: header must contain columns 'q' and 'a', got "
                      f"{header}")
    yield reader, header, header.index("q"), header.index("a")


class LineNumbers:
  """File line of data row `rows[i]` (header = line 1), found by reading the
  file again: only error messages need it, so a hot loop stores none
  (quoted fields may span lines, so it is not simply rows[i] + 2)."""

  def __init__(self, path: str, rows):
    self._path, self._rows = path, rows

  def __getitem__(self, i: int) -> int:
    want = int(self._rows[i]) + 1  # The header is record 0.
    with open(self._path, newline="") as f:
      reader = csv.reader(f)
      for k, _ in enumerate(reader):
        if k == want:
          return reader.line_num
    return want + 1
