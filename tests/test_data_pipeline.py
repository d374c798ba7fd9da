"""Builders, load(), the reference npy layout, and the samplers."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hrm_jax import data
from hrm_jax.data import builders
from hrm_jax.data import config as config_lib
from hrm_jax.data import npy_format
from hrm_jax.data import puzzles
from hrm_jax.data import sampler as sampler_lib


def _sudoku_cfg(data_dir, **kw):
  cfg = data.default_config("sudoku")
  cfg.update(data_dir=str(data_dir), board_size=6, num_blanks=16,
             train_size=6, test_size=5, num_aug=3, num_workers=1)
  cfg.update(kw)
  return cfg


def _arc_cfg(data_dir, **kw):
  cfg = data.default_config("arc")
  cfg.update(data_dir=str(data_dir), max_tasks_per_subset=2, num_aug=3)
  cfg.update(kw)
  return cfg


def _assert_splits_equal(a, b):
  for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices",
                "group_indices"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert a.metadata == b.metadata and a.identifiers == b.identifiers


def test_default_configs_have_documented_fields():
  for name in ("sudoku", "maze", "arc"):
    cfg = data.default_config(name)
    for field in ("family", "data_dir", "source", "seed"):
      assert field in cfg
    assert "~" not in cfg.data_dir
  assert data.default_config("arc").num_aug == 1000
  assert data.default_config("maze").grid_size == 30
  with pytest.raises(ValueError):
    data.default_config("chess")


def test_config_hash_tracks_content_fields(tmp_path):
  a = _sudoku_cfg(tmp_path)
  b = _sudoku_cfg(tmp_path / "elsewhere", num_workers=2)
  assert config_lib.config_name(a) == config_lib.config_name(b)
  assert config_lib.config_name(a) != config_lib.config_name(
      _sudoku_cfg(tmp_path, seed=1))


def test_sudoku_build_round_trips_through_tfds_data_source(tmp_path):
  cfg = _sudoku_cfg(tmp_path)
  train = data.load(cfg, "train")
  test = data.load(cfg, "test")
  m = train.metadata
  assert (m.vocab_size, m.seq_len, m.num_puzzle_identifiers) == (8, 36, 1)
  assert (m.ignore_label_id, m.pad_id, m.total_groups) == (0, 0, 6)
  assert train.inputs.shape == (24, 36) and test.inputs.shape == (5, 36)
  assert np.all(train.puzzle_identifiers == 0)
  np.testing.assert_array_equal(train.group_indices, np.arange(0, 25, 4))
  name = f"hrm_sudoku/{config_lib.config_name(cfg)}"
  source = tfds.data_source(name, data_dir=str(tmp_path))  # No code needed.
  record = source["train"][2]
  np.testing.assert_array_equal(record["inputs"], train.inputs[8:12])
  np.testing.assert_array_equal(record["labels"], train.labels[8:12])
  assert len(source["test"]) == 5
  builder = tfds.builder(name, data_dir=str(tmp_path))
  assert builder.info.metadata["vocab_size"] == 8
  # A second load reads the same build; a changed config builds anew.
  _assert_splits_equal(train, data.load(cfg, "train"))
  other = data.load(_sudoku_cfg(tmp_path, seed=3), "train")
  assert not np.array_equal(other.inputs, train.inputs)


def test_maze_build_with_dihedral_groups(tmp_path):
  cfg = data.default_config("maze")
  cfg.update(data_dir=str(tmp_path), grid_size=7, train_size=3, test_size=2,
             dihedral_aug=True)
  train = data.load(cfg, "train")
  assert train.inputs.shape == (24, 49) and train.num_groups == 3
  assert train.metadata.vocab_size == 6


def test_arc_build_and_npy_round_trip(tmp_path):
  cfg = _arc_cfg(tmp_path / "tfds")
  train, test = data.load(cfg, "train"), data.load(cfg, "test")
  assert train.metadata.num_puzzle_identifiers == len(train.identifiers)
  assert train.metadata.vocab_size == 12 and test.metadata.seq_len == 900
  for split_name, split in (("train", train), ("test", test)):
    npy_format.write_split(split, str(tmp_path / "npy"), split_name)
  npy = data.default_config("arc")
  npy.source = f"npy:{tmp_path / 'npy'}"
  _assert_splits_equal(data.load(npy, "train"), train)
  _assert_splits_equal(data.load(npy, "test"), test)
  meta = json.loads((tmp_path / "npy" / "test" / "dataset.json").read_text())
  assert meta["sets"] == ["all"] and meta["vocab_size"] == 12


def test_npy_reader_errors_name_the_file(tmp_path):
  cfg = data.default_config("sudoku")
  cfg.source = f"npy:{tmp_path}"
  with pytest.raises(data.DataError, match="dataset.json: file not found"):
    data.load(cfg, "train")


def _toy_split(group_sizes, seq=4, ignore=0):
  """Groups of puzzles with the given example counts; token = example id."""
  inputs, labels, pids, psizes, gidx = [], [], [], [], [0]
  e = 0
  for group in group_sizes:
    for size in group:
      pids.append(len(pids) + 1)
      psizes.append(size)
      for _ in range(size):
        inputs.append(np.full(seq, e % 250 + 1))
        labels.append(np.array([0] + [e % 250 + 1] * (seq - 1)))
        e += 1
    gidx.append(gidx[-1] + len(group))
  meta = puzzles.DatasetMetadata(
      vocab_size=256, seq_len=seq, num_puzzle_identifiers=len(pids) + 1,
      pad_id=0, ignore_label_id=ignore, blank_identifier_id=0,
      total_groups=len(group_sizes), mean_puzzle_examples=e / len(pids))
  return puzzles.PuzzleSplit(
      inputs=np.array(inputs, np.uint8), labels=np.array(labels, np.uint8),
      puzzle_identifiers=np.array(pids, np.int32),
      puzzle_indices=np.concatenate([[0], np.cumsum(psizes)]).astype(np.int64),
      group_indices=np.array(gidx, np.int64), metadata=meta,
      identifiers=["<blank>"] + [f"p{i}" for i in pids])


_GROUPS = [[3, 2], [1], [4, 4, 1], [2], [5], [1, 1, 1], [3], [2, 2]] * 3


def _visit_sequence(split, batches):
  """The group visits a stream of batches shows: [(batch, group, taken)].

  Within a batch, a run of rows of one puzzle is one visit, or several whole
  ones when longer than the puzzle (the same puzzle drawn again across an
  epoch seam); only a batch's last visit may be cut short.
  """
  example_puzzle = np.repeat(np.arange(len(split.puzzle_identifiers)),
                             np.diff(split.puzzle_indices))
  puzzle_group = np.repeat(np.arange(split.num_groups),
                           np.diff(split.group_indices))
  sizes = np.diff(split.puzzle_indices)
  visits = []
  for b, batch in enumerate(batches):
    ex = batch["inputs"][:, 0].astype(np.int64) - 1
    puzzle = example_puzzle[ex]
    row = 0
    while row < len(puzzle):
      p = puzzle[row]
      taken = 1
      while (row + taken < len(puzzle) and puzzle[row + taken] == p and
             taken < sizes[p]):
        taken += 1
      assert taken == sizes[p] or row + taken == len(puzzle), (b, row)
      assert len(set(ex[row:row + taken].tolist())) == taken  # No repeats.
      visits.append((b, int(puzzle_group[p]), taken))
      row += taken
  return visits


def _one_iteration(sampler):
  i = sampler.iteration
  batches = []
  while sampler.iteration == i:
    batches.append(next(sampler))
  return batches


def test_train_sampler_chains_epochs_and_drops_one_partial_batch():
  split = _toy_split(_GROUPS)  # 24 groups, ~58 examples an epoch.
  epochs, num_groups = 3, split.num_groups
  sampler = data.TrainSampler(split, 8, seed=0, epochs_per_iteration=epochs)
  example_puzzle = np.repeat(np.arange(len(split.puzzle_identifiers)),
                             np.diff(split.puzzle_indices))
  count = sampler.batches_in_iteration(0)
  batches = _one_iteration(sampler)
  assert len(batches) == count and sampler.iteration == 1
  assert sampler.batch_in_iteration == 0 and sampler.epoch == epochs
  for batch in batches:
    ex = batch["inputs"][:, 0].astype(np.int64) - 1
    assert batch["inputs"].dtype == np.int32 and batch["inputs"].shape == (8, 4)
    np.testing.assert_array_equal(batch["puzzle_identifiers"],
                                  split.puzzle_identifiers[example_puzzle[ex]])
    # Label id 0 (ignore_label_id) became -100; others are untouched.
    assert np.all(batch["labels"][:, 0] == -100)
    np.testing.assert_array_equal(batch["labels"][:, 1], ex + 1)
  visits = _visit_sequence(split, batches)
  groups = [g for _, g, _ in visits]
  # Epoch after epoch, each a permutation of the groups, packed back to back:
  # only the tail of the last epoch (less than a batch) is missing.
  for e in range(epochs - 1):
    assert sorted(groups[e * num_groups:(e + 1) * num_groups]) == list(
        range(num_groups))
  tail = groups[(epochs - 1) * num_groups:]
  assert len(tail) == len(set(tail)) and len(tail) < num_groups
  least = {g: min(np.diff(split.puzzle_indices)[lo:hi]) for g, (lo, hi) in
           enumerate(zip(split.group_indices[:-1], split.group_indices[1:]))}
  assert sum(least[g] for g in set(range(num_groups)) - set(tail)) < 8
  # Some batch holds the end of one epoch and the start of the next.
  seams = [visits[k * num_groups][0] for k in range(1, epochs)]
  assert any(visits[k * num_groups - 1][0] == b for k, b in
             zip(range(1, epochs), seams))
  # Iteration 1 starts a fresh chain.
  assert len(_one_iteration(sampler)) == sampler.batches_in_iteration(1)
  assert sampler.epoch == 2 * epochs


@pytest.mark.parametrize("sizes, batch", [
    ([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7], 16),  # Walks the cumsums.
    ([2] * 11, 7),  # Closed form: every visit adds 2 examples.
])
def test_batches_in_iteration_counts_every_full_batch(sizes, batch):
  split = _toy_split([[s] for s in sizes])  # One puzzle per group.
  epochs = 3
  sampler = data.TrainSampler(split, batch, seed=4,
                              epochs_per_iteration=epochs)
  for i in range(4):
    batches = _one_iteration(sampler)
    assert len(batches) == sampler.batches_in_iteration(i) > 0
    visits = _visit_sequence(split, batches)
    assert all(len(b["inputs"]) == batch for b in batches)
    # What was never visited in the last epoch is too little for a batch.
    last = {g for _, g, _ in visits[(epochs - 1) * len(sizes):]}
    assert sum(sizes[g] for g in set(range(len(sizes))) - last) < batch


def test_iteration_batches_plans_the_paper_runs():
  # Sudoku-Extreme-1k / Maze-Hard-1k: 1000 groups, batch 768, eval every
  # 2000 of 20000 epochs: 10 iterations of 2604 updates.
  per_iteration = sampler_lib.iteration_batches(1000, 2000, 768)
  assert per_iteration == 2604 and 10 * per_iteration == 26040
  assert sampler_lib.iteration_batches(1000, 1, 768) == 1
  with pytest.raises(ValueError, match="epochs_per_iteration must be >= 1"):
    sampler_lib.iteration_batches(1000, 0, 768)
  split = _toy_split([[1, 1]] * 10)
  sampler = data.TrainSampler(split, 6, seed=0, epochs_per_iteration=7)
  assert sampler.batches_in_iteration(5) == sampler_lib.iteration_batches(
      10, 7, 6) == 11


def test_train_sampler_resumes_exactly():
  split = _toy_split(_GROUPS)
  full = data.TrainSampler(split, 8, seed=7)
  reference = [next(full) for _ in range(15)]  # Crosses epoch boundaries.
  assert full.epoch >= 2
  first = data.TrainSampler(split, 8, seed=7)
  for _ in range(6):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  resumed = data.TrainSampler(split, 8, seed=7)
  resumed.set_state(state)
  for want in reference[6:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  other = data.TrainSampler(split, 8, seed=8)
  assert not np.array_equal(next(other)["inputs"], reference[0]["inputs"])
  with pytest.raises(ValueError, match="global_batch_size"):
    data.TrainSampler(split, 4, seed=7).set_state(state)


def test_resume_is_exact_at_every_cut_across_epoch_and_iteration_seams():
  split = _toy_split(_GROUPS)
  make = lambda: data.TrainSampler(split, 8, seed=11, epochs_per_iteration=2)
  probe = make()
  total = probe.batches_in_iteration(0) + 6  # Into iteration 1.
  stream, states, epochs = [], [], []
  for _ in range(total):
    states.append(json.loads(json.dumps(probe.get_state())))
    epochs.append(probe.epoch)
    stream.append(next(probe))
  # Cuts where the next batch runs across the epoch seam, and the iteration
  # seam itself, are among the cuts tested.
  crossing = [k for k in range(total - 1) if epochs[k] < 1 < epochs[k + 1]]
  assert crossing and states[crossing[0]]["iteration"] == 0
  seam = probe.batches_in_iteration(0)
  assert states[seam]["iteration"] == 1 and states[seam]["position"] == 0
  for k in range(total):
    resumed = make()
    resumed.set_state(states[k])
    assert resumed.epoch == epochs[k]
    for want in stream[k:]:
      got = next(resumed)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  assert all(isinstance(v, int) for v in states[-1].values())


@pytest.mark.parametrize("change, field", [
    (dict(seed=12), "seed"),
    (dict(global_batch_size=16), "global_batch_size"),
    (dict(epochs_per_iteration=3), "epochs_per_iteration"),
    (dict(split=[[1]] * 24), "num_puzzles"),
])
def test_set_state_rejects_another_run(change, field):
  split = _toy_split(_GROUPS)
  saved = data.TrainSampler(split, 8, seed=11, epochs_per_iteration=2)
  next(saved)
  kw = dict(global_batch_size=8, seed=11, epochs_per_iteration=2)
  kw.update({k: v for k, v in change.items() if k != "split"})
  other = data.TrainSampler(_toy_split(change.get("split", _GROUPS)), **kw)
  with pytest.raises(ValueError, match=f"{field}=.*resume with the {field}"):
    other.set_state(saved.get_state())
  old = {"seed": 11, "epoch": 0, "batch_in_epoch": 1, "group_cursor": 3,
         "global_batch_size": 8, "num_groups": 24}
  with pytest.raises(ValueError, match="lacks .*epochs_per_iteration"):
    saved.set_state(old)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(process_count):
  split = _toy_split(_GROUPS)
  whole = data.TrainSampler(split, 8, seed=3, epochs_per_iteration=2)
  parts = [data.TrainSampler(split, 8, seed=3, process_index=i,
                             process_count=process_count,
                             epochs_per_iteration=2)
           for i in range(process_count)]
  for _ in range(whole.batches_in_iteration(0) + 3):  # Across both seams.
    want = next(whole)
    got = [next(p) for p in parts]
    assert got[0]["inputs"].shape == (8 // process_count, 4)
    for key in want:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]),
                                    want[key])
  assert all(p.get_state() == whole.get_state() for p in parts)
  with pytest.raises(ValueError, match="not divisible"):
    data.TrainSampler(split, 8, seed=3, process_index=0, process_count=3)


def test_dataset_smaller_than_a_batch_trains_across_epochs():
  split = _toy_split([[1], [2]])  # 2 groups, 3 examples an epoch; batch 8.
  with pytest.raises(data.DataError, match=(
      r"global batch 8 is larger than one iteration can fill: 1 epoch\(s\) "
      r"of 2 groups hold at most 3 examples")):
    data.TrainSampler(split, 8, seed=0)
  sampler = data.TrainSampler(split, 8, seed=0, epochs_per_iteration=8)
  for i in range(3):
    batches = _one_iteration(sampler)
    assert len(batches) == sampler.batches_in_iteration(i) >= 2
    for batch in batches:
      ex = batch["inputs"][:, 0] - 1
      assert batch["inputs"].shape == (8, 4) and set(ex.tolist()) <= {0, 1, 2}
      # Batches span epochs: each group comes several times per batch.
      assert (ex == 0).sum() >= 1 and ((ex == 1) | (ex == 2)).sum() >= 2


def test_iterations_whose_draws_cannot_fill_a_batch_are_skipped():
  # One epoch holds 2, 6 or 10 examples: only when both groups draw their
  # 5-example puzzle (1 in 4) does the iteration hold a batch of 8.
  split = _toy_split([[1, 5], [5, 1]])
  sampler = data.TrainSampler(split, 8, seed=1)
  counts = [sampler.batches_in_iteration(i) for i in range(40)]
  assert set(counts) == {0, 1} and 4 < sum(counts) < 20
  full = [i for i, c in enumerate(counts) if c]
  for i in full[:5]:
    next(sampler)  # Skips the empty iterations before i.
    assert sampler.iteration == i + 1 and sampler.epoch == i + 1
  state = sampler.get_state()
  resumed = data.TrainSampler(split, 8, seed=1)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"],
                                next(sampler)["inputs"])
  assert sampler.iteration == full[5] + 1
  with pytest.raises(data.DataError, match="at most 10 examples"):
    data.TrainSampler(split, 11, seed=1)


def test_eval_batches_cover_everything_and_pad():
  split = _toy_split(_GROUPS)
  n = split.num_examples
  batches = list(data.eval_batches(split, 16))
  assert len(batches) == -(-n // 16)
  index = np.concatenate([b["example_index"] for b in batches])
  np.testing.assert_array_equal(index[:n], np.arange(n))
  assert np.all(index[n:] == -1)
  last = batches[-1]
  pad = last["example_index"] < 0
  assert np.all(last["inputs"][pad] == 0)
  assert np.all(last["labels"][pad] == -100)
  assert np.all(last["puzzle_identifiers"][pad] == 0)
  assert np.all(last["puzzle_identifiers"][~pad] > 0)
  halves = [list(data.eval_batches(split, 16, i, 2)) for i in range(2)]
  for whole, a, b in zip(batches, *halves):
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([a[key], b[key]]),
                                    whole[key])


def test_labels_without_ignore_id_are_kept():
  split = _toy_split(_GROUPS, ignore=None)
  batch = next(iter(data.eval_batches(split, 8)))
  assert np.all(batch["labels"][:, 0] == 0)
  assert builders.BUILDERS["arc"].name == "hrm_arc"


def test_build_cli(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  out = subprocess.run(
      [sys.executable, "-m", "hrm_jax.data.build", "--dataset=maze",
       f"--data_dir={tmp_path}", "--set=grid_size=7", "--set=train_size=4",
       "--set=test_size=2", "--set=dihedral_aug=true"],
      capture_output=True, text=True, check=True).stdout
  assert "train: 32 examples" in out and "test: 2 examples" in out
  name = out.split("tfds.data_source('")[1].split("'")[0]
  assert len(tfds.data_source(name, data_dir=str(tmp_path))["train"]) == 4


def test_csv_sources_through_load(tmp_path):
  from hrm_jax.data import maze, sudoku  # pylint: disable=g-import-not-at-top
  root = tmp_path / "sudoku-extreme"
  root.mkdir()
  for split, count in (("train", 4), ("test", 3)):
    q, a, r = sudoku.generate(9, count, seed=0, tag=split)
    lines = ["source,q,a,rating"] + [
        "gen,{},{},{}".format(
            "".join(map(str, x.reshape(-1))).replace("0", "."),
            "".join(map(str, y.reshape(-1))), z) for x, y, z in zip(q, a, r)]
    (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
  cfg = data.default_config("sudoku")
  cfg.update(data_dir=str(tmp_path / "tfds"), source=f"csv:{root}",
             train_size=2, num_aug=2)
  train, test = data.load(cfg, "train"), data.load(cfg, "test")
  assert train.inputs.shape == (6, 81) and test.inputs.shape == (3, 81)
  assert train.metadata.vocab_size == 11 and train.num_groups == 2
  mroot = tmp_path / "maze"
  mroot.mkdir()
  for split in ("train", "test"):
    x, y, _ = maze.generate(7, 3, 8, 0.0, 0, split)
    lines = ["source,q,a,rating"] + [
        f"gen,{maze.decode(i)},{maze.decode(j)},0" for i, j in zip(x, y)]
    (mroot / f"{split}.csv").write_text("\n".join(lines) + "\n")
  mcfg = data.default_config("maze")
  mcfg.update(data_dir=str(tmp_path / "tfds"), source=f"csv:{mroot}",
              grid_size=7, train_size=0)
  assert data.load(mcfg, "test").inputs.shape == (3, 49)


def test_hf_source_without_huggingface_hub_is_a_clear_error(tmp_path,
                                                            monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  cfg = data.default_config("sudoku")
  cfg.update(data_dir=str(tmp_path), source="hf:sapientinc/sudoku-extreme")
  with pytest.raises(data.DataError, match="needs huggingface_hub"):
    data.load(cfg, "train")


def test_a_build_past_the_shufflers_memory_buffer_needs_no_tensorflow(tmp_path, monkeypatch):
  """Builds over `tfds.core.shuffle.MAX_MEM_BUFFER_SIZE` (1 GB: the paper ARC set)
  spill to bucket files through `tf.io.gfile`; without TensorFlow the builders give
  the shuffler epath's file calls. Forced here with a 0-byte buffer: the same
  arrays as an in-memory build, and the temporary buckets gone."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=import-outside-toplevel
  in_memory = data.load(_sudoku_cfg(tmp_path / "memory"), "train")
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)
  spilled_dir = tmp_path / "spilled"
  spilled = data.load(_sudoku_cfg(spilled_dir), "train")
  _assert_splits_equal(in_memory, spilled)
  assert not list(spilled_dir.rglob("bucket_*.tmp"))
