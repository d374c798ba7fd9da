"""The reference's on-disk layout (spec §5.1), read and written.

  <dir>/identifiers.json                       id -> name, id 0 = "<blank>"
  <dir>/<split>/dataset.json                   metadata (+ "sets")
  <dir>/<split>/<set>__{inputs,labels,puzzle_identifiers,puzzle_indices,
                         group_indices}.npy

Reading lets users reuse datasets built by the original scripts; writing lets
the original `puzzle_visualizer.html` inspect ours. Several sets are
concatenated (the reference always writes one, "all"). Every file is checked
on reading (`puzzles.validate_arrays`): a bad one fails with its path, row
and column instead of training on garbage.
"""

from __future__ import annotations

import json
import os

import numpy as np

from hrm_jax.data import puzzles
from hrm_jax.data.errors import DataError

_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices",
           "group_indices")
_META = ("vocab_size", "seq_len", "num_puzzle_identifiers", "pad_id",
         "ignore_label_id", "blank_identifier_id")


def _read_json(path: str):
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found (expected the reference's "
                    "identifiers.json + <split>/dataset.json layout)")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: invalid JSON ({e})") from None


def _load_array(path: str, field: str) -> np.ndarray:
  """One .npy file as an integer array of the field's rank, or DataError."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  want_ndim = 2 if field in ("inputs", "labels") else 1
  try:
    value = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"{path}: not a readable .npy file ({e}); expected the "
                    f"{want_ndim}-D integer array '{field}' written by "
                    "np.save") from None
  if not isinstance(value, np.ndarray):  # An .npz archive opens as a dict.
    value.close()
    raise DataError(f"{path}: an .npz archive, not one .npy array; save "
                    f"'{field}' with np.save")
  if value.dtype.kind not in "iu":
    raise DataError(f"{path}: dtype {value.dtype}; '{field}' must hold "
                    "integers (the reference writes int32)")
  if value.ndim != want_ndim:
    raise DataError(f"{path}: shape {value.shape}; '{field}' must be "
                    f"{want_ndim}-D")
  return value


def read_shape(root: str) -> puzzles.DatasetShape:
  """Vocabulary, length and puzzle-id count from train/dataset.json alone."""
  meta = _read_json(os.path.join(os.path.expanduser(root), "train", "dataset.json"))
  try:
    return puzzles.DatasetShape(*(int(meta[k]) for k in (
        "vocab_size", "seq_len", "num_puzzle_identifiers")))
  except KeyError as e:
    raise DataError(f"{root}/train/dataset.json: missing field {e}") from None


def read_split(root: str, split: str) -> puzzles.PuzzleSplit:
  """Reads one split of a reference-built dataset into memory."""
  root = os.path.expanduser(root)
  meta = _read_json(os.path.join(root, split, "dataset.json"))
  identifiers = _read_json(os.path.join(root, "identifiers.json"))
  missing = [k for k in _META if k not in meta]
  if missing:
    raise DataError(f"{root}/{split}/dataset.json: missing fields {missing}")
  arrays = {k: [] for k in _FIELDS}
  example_base = puzzle_base = 0
  for set_name in meta.get("sets", ["all"]):
    part = {k: _load_array(os.path.join(root, split, f"{set_name}__{k}.npy"),
                           k) for k in _FIELDS}
    # Every file, every row, before anything is concatenated or cast: a
    # token >= vocab_size would otherwise only surface as NaN in training.
    puzzles.validate_arrays(
        **part, vocab_size=meta["vocab_size"], seq_len=meta["seq_len"],
        num_puzzle_identifiers=meta["num_puzzle_identifiers"],
        ignore_label_id=meta["ignore_label_id"], origin=root,
        names={k: f"{split}/{set_name}__{k}.npy" for k in _FIELDS},
        fix=f"Correct the file or {split}/dataset.json")
    n = len(part["inputs"])
    skip = 1 if arrays["inputs"] else 0  # Drop the repeated leading zero.
    arrays["inputs"].append(part["inputs"])
    arrays["labels"].append(part["labels"])
    arrays["puzzle_identifiers"].append(part["puzzle_identifiers"])
    arrays["puzzle_indices"].append(
        part["puzzle_indices"][skip:].astype(np.int64) + example_base)
    arrays["group_indices"].append(
        part["group_indices"][skip:].astype(np.int64) + puzzle_base)
    example_base += n
    puzzle_base += len(part["puzzle_identifiers"])
  cat = {k: np.concatenate(v) for k, v in arrays.items()}
  # Validation kept every id below vocab_size: only a larger vocabulary can
  # hold ids that do not fit the uint8 the trainer keeps splits in.
  if meta["vocab_size"] > 256 and (cat["inputs"].max(initial=0) > 255 or
                                   cat["labels"].max(initial=0) > 255):
    raise DataError(f"{root}/{split}: token ids above 255 are not supported")
  metadata = puzzles.DatasetMetadata(
      total_groups=len(cat["group_indices"]) - 1,
      mean_puzzle_examples=float(meta.get(
          "mean_puzzle_examples",
          example_base / max(1, puzzle_base))),
      **{k: meta[k] for k in _META})
  return puzzles.PuzzleSplit(
      inputs=cat["inputs"].astype(np.uint8),
      labels=cat["labels"].astype(np.uint8),
      puzzle_identifiers=cat["puzzle_identifiers"].astype(np.int32),
      puzzle_indices=cat["puzzle_indices"],
      group_indices=cat["group_indices"],
      metadata=metadata,
      identifiers=list(identifiers))


def write_split(split_data: puzzles.PuzzleSplit, root: str, split: str):
  """Writes one split (and identifiers.json) in the reference layout."""
  root = os.path.expanduser(root)
  os.makedirs(os.path.join(root, split), exist_ok=True)
  meta = {k: getattr(split_data.metadata, k) for k in _META}
  meta.update(total_groups=split_data.metadata.total_groups,
              mean_puzzle_examples=split_data.metadata.mean_puzzle_examples,
              sets=["all"])
  with open(os.path.join(root, split, "dataset.json"), "w") as f:
    json.dump(meta, f)
  with open(os.path.join(root, "identifiers.json"), "w") as f:
    json.dump(split_data.identifiers, f)
  for k in _FIELDS:
    value = getattr(split_data, k)
    if k in ("puzzle_indices", "group_indices"):
      value = value.astype(np.int32)
    np.save(os.path.join(root, split, f"all__{k}.npy"), value)
