"""In-memory dataset types shared by every puzzle family.

Hierarchy (reference §5.1): a *group* is one original puzzle plus all its
augmented variants; a *puzzle* is one variant with its own identifier; an
*example* is one input/label pair. `Group` is the unit the builders write (one
TFDS record per group) and `PuzzleSplit` is what the trainer reads.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Iterable, Iterator

from etils import epath
import numpy as np

PAD_ID = 0
BLANK_IDENTIFIER_ID = 0
BLANK_IDENTIFIER = "<blank>"
# What label id `metadata.ignore_label_id` becomes: the loss and metrics skip it.
IGNORE_LABEL_ID = -100


def loss_labels(labels: np.ndarray, ignore_label_id: int | None) -> np.ndarray:
  """Stored labels -> int32 labels with the dataset's ignore id as IGNORE_LABEL_ID."""
  labels = np.asarray(labels).astype(np.int32)
  if ignore_label_id is not None:
    labels[labels == ignore_label_id] = IGNORE_LABEL_ID
  return labels


@dataclasses.dataclass(frozen=True)
class DatasetShape:
  """The three numbers a model takes from its dataset."""
  vocab_size: int
  seq_len: int
  num_puzzle_identifiers: int


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
  """The reference's dataset.json fields (minus `sets`, always ["all"])."""
  vocab_size: int
  seq_len: int
  num_puzzle_identifiers: int
  pad_id: int
  ignore_label_id: int | None
  blank_identifier_id: int
  total_groups: int
  mean_puzzle_examples: float

  @property
  def shape(self) -> DatasetShape:
    return DatasetShape(self.vocab_size, self.seq_len, self.num_puzzle_identifiers)


@dataclasses.dataclass
class PuzzleSplit:
  """One split in the reference layout, held in numpy.

  `inputs`/`labels` keep the compact on-disk dtype (uint8: every vocabulary
  here is < 256) because a paper-scale ARC train split has ~4M x 900 tokens;
  the samplers hand out int32 batches.
  """
  inputs: np.ndarray  # [N, S] token ids
  labels: np.ndarray  # [N, S] raw label ids (ignore_label_id not converted)
  puzzle_identifiers: np.ndarray  # [P] int32
  puzzle_indices: np.ndarray  # [P+1] int64
  group_indices: np.ndarray  # [G+1] int64
  metadata: DatasetMetadata
  identifiers: list[str]  # id -> name; id 0 = "<blank>"

  @property
  def num_examples(self) -> int:
    return int(self.inputs.shape[0])

  @property
  def num_groups(self) -> int:
    return int(self.group_indices.shape[0] - 1)

  def example_puzzle_identifiers(self) -> np.ndarray:
    """int32 [N]: the puzzle identifier of every example."""
    sizes = np.diff(self.puzzle_indices)
    return np.repeat(self.puzzle_identifiers, sizes).astype(np.int32)


@dataclasses.dataclass
class Group:
  """One group: all examples of all its puzzles, puzzle after puzzle."""
  inputs: np.ndarray  # [E, S] uint8
  labels: np.ndarray  # [E, S] uint8
  puzzle_identifiers: np.ndarray  # [P] int32
  puzzle_sizes: np.ndarray  # [P] int32, examples per puzzle (sum = E)

  def as_record(self) -> dict[str, np.ndarray]:
    return {
        "inputs": np.asarray(self.inputs, np.uint8),
        "labels": np.asarray(self.labels, np.uint8),
        "puzzle_identifiers": np.asarray(self.puzzle_identifiers, np.int32),
        "puzzle_sizes": np.asarray(self.puzzle_sizes, np.int32),
    }


@dataclasses.dataclass
class DatasetPlan:
  """Everything a builder needs to write a dataset, with groups made lazily.

  Groups are produced on demand because a paper-scale ARC dataset does not fit
  in memory before it is compressed on disk.
  """
  vocab_size: int
  seq_len: int
  ignore_label_id: int | None
  identifiers: list[str]
  num_groups: dict[str, int]  # split -> number of groups
  make_groups: Callable[[str], Iterator[Group]]

  def common_metadata(self) -> dict:
    return {
        "vocab_size": self.vocab_size,
        "seq_len": self.seq_len,
        "num_puzzle_identifiers": len(self.identifiers),
        "pad_id": PAD_ID,
        "ignore_label_id": self.ignore_label_id,
        "blank_identifier_id": BLANK_IDENTIFIER_ID,
    }


def split_from_groups(groups: Iterable[Group], common: dict,
                      identifiers: list[str], seq_len: int) -> PuzzleSplit:
  """Concatenates groups into a `PuzzleSplit` (computing the index arrays)."""
  inputs, labels, ids, sizes, per_group = [], [], [], [], []
  for g in groups:
    inputs.append(np.asarray(g.inputs, np.uint8).reshape(-1, seq_len))
    labels.append(np.asarray(g.labels, np.uint8).reshape(-1, seq_len))
    ids.append(np.asarray(g.puzzle_identifiers, np.int32).reshape(-1))
    sizes.append(np.asarray(g.puzzle_sizes, np.int64).reshape(-1))
    per_group.append(len(ids[-1]))
  empty = np.zeros((0, seq_len), np.uint8)
  sizes_p = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
  puzzle_indices = np.concatenate([[0], np.cumsum(sizes_p)]).astype(np.int64)
  group_indices = np.concatenate([[0], np.cumsum(per_group)]).astype(np.int64)
  num_puzzles = len(sizes_p)
  metadata = DatasetMetadata(
      total_groups=len(per_group),
      mean_puzzle_examples=(float(puzzle_indices[-1]) / num_puzzles
                            if num_puzzles else 0.0),
      **common)
  return PuzzleSplit(
      inputs=np.concatenate(inputs) if inputs else empty,
      labels=np.concatenate(labels) if labels else empty.copy(),
      puzzle_identifiers=(np.concatenate(ids) if ids
                          else np.zeros(0, np.int32)),
      puzzle_indices=puzzle_indices,
      group_indices=group_indices,
      metadata=metadata,
      identifiers=list(identifiers))


def single_example_groups(inputs_NxS: np.ndarray,
                          labels_NxS: np.ndarray) -> Iterator[Group]:
  """One group per row, one blank-id puzzle each (Sudoku/Maze style)."""
  for x, y in zip(inputs_NxS, labels_NxS):
    yield Group(x[None], y[None], np.zeros(1, np.int32), np.ones(1, np.int32))


DATASET_INFO_NAME = "dataset.json"


def write_dataset_info(directory, metadata: DatasetMetadata,
                       identifiers: list[str]) -> None:
  """Writes DIRECTORY/dataset.json: what a model needs from its dataset (vocab,
  length, puzzle ids and their names), so a checkpoint is usable without the data."""
  text = json.dumps({"metadata": dataclasses.asdict(metadata),
                     "identifiers": list(identifiers)})
  path = epath.Path(directory) / DATASET_INFO_NAME
  if not path.exists() or path.read_text() != text:
    path.write_text(text)


def read_dataset_info(directory) -> tuple[DatasetMetadata, list[str]] | None:
  """(metadata, identifiers) from DIRECTORY/dataset.json; None if absent."""
  path = epath.Path(directory) / DATASET_INFO_NAME
  if not path.exists():
    return None
  saved = json.loads(path.read_text())
  return DatasetMetadata(**saved["metadata"]), list(saved["identifiers"])
