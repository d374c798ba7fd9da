"""TrainSampler against a transcription of the reference's training stream.

`_reference_iteration` below is our transcription of the reference's
`PuzzleDataset._iter_train` + `_sample_batch` (sapientinc/HRM,
puzzle_dataset.py), written from reading it: per iteration a Philox
generator seeded `seed + iteration` draws `epochs` group permutations that
are chained; batches are filled by walking the chain, one random puzzle per
group visit, `min(puzzle size, room left)` of its examples without
replacement; a batch that cannot be filled ends the iteration and is
dropped. Two liberties keep it fast enough for a unit test, neither changes
what is drawn in distribution: the puzzle of every visit is drawn up front in
one vectorised `integers` call (the reference draws it when the group is
reached), and `choice(size, take, replace=False)` is written as
`permutation(size)[:take]` (and skipped for one-example puzzles, where both
return [0]).

The RNGs differ from ours (reference: Philox and the global unseeded
np.random), so the tests compare distributions, not draws.
"""

import numpy as np

from hrm_jax import data
from hrm_jax.data import puzzles
from hrm_jax.data import sampler as sampler_lib


def _reference_iteration(group_indices, puzzle_indices, batch_size, epochs,
                         seed, iteration, example_rng):
  """Yields the (example index, puzzle index) lists of each kept batch."""
  rng = np.random.Generator(np.random.Philox(seed=seed + iteration))
  num_groups = len(group_indices) - 1
  chain = np.concatenate([rng.permutation(num_groups) for _ in range(epochs)])
  picks = rng.integers(group_indices[chain], group_indices[chain + 1]).tolist()
  starts = np.asarray(puzzle_indices).tolist()
  cursor = 0
  while cursor < len(picks):
    rows, owners, filled = [], [], 0
    while cursor < len(picks) and filled < batch_size:
      puzzle = picks[cursor]
      cursor += 1
      first, size = starts[puzzle], starts[puzzle + 1] - starts[puzzle]
      take = min(size, batch_size - filled)
      if size == 1:
        rows.append(first)
      else:
        rows.extend((first + example_rng.permutation(size)[:take]).tolist())
      owners.extend([puzzle] * take)
      filled += take
    if filled < batch_size:
      return  # The reference drops the incomplete batch and ends the iteration.
    yield rows, owners


def _split(puzzles_per_group, puzzle_sizes):
  """A PuzzleSplit whose example e has tokens (e // 250 + 1, e % 250 + 1)."""
  puzzle_sizes = np.asarray(puzzle_sizes, np.int64)
  num = int(puzzle_sizes.sum())
  assert num < 250 * 250
  ids = np.arange(num)
  tokens = np.stack([ids // 250 + 1, ids % 250 + 1], axis=1).astype(np.uint8)
  groups = np.concatenate([[0], np.cumsum(puzzles_per_group)]).astype(np.int64)
  meta = puzzles.DatasetMetadata(
      vocab_size=256, seq_len=2, num_puzzle_identifiers=puzzle_sizes.size + 1,
      pad_id=0, ignore_label_id=None, blank_identifier_id=0,
      total_groups=len(puzzles_per_group),
      mean_puzzle_examples=num / puzzle_sizes.size)
  return puzzles.PuzzleSplit(
      inputs=tokens, labels=tokens.copy(),
      puzzle_identifiers=np.arange(1, puzzle_sizes.size + 1, dtype=np.int32),
      puzzle_indices=np.concatenate([[0], np.cumsum(puzzle_sizes)]).astype(
          np.int64),
      group_indices=groups, metadata=meta,
      identifiers=["<blank>"] + [f"p{i}" for i in range(puzzle_sizes.size)])


def _ours(sampler, iteration):
  """(example index, puzzle index) lists of every batch of `iteration`."""
  assert sampler.iteration == iteration and sampler.batch_in_iteration == 0
  out = []
  while sampler.iteration == iteration:
    batch = next(sampler)
    x = batch["inputs"].astype(np.int64)
    out.append(((x[:, 0] - 1) * 250 + x[:, 1] - 1,
                batch["puzzle_identifiers"].astype(np.int64) - 1))
  return out


def _visits(rows, owners, split):
  """Splits one batch into group visits: (puzzle [V], examples taken [V]).

  A visit is a run of rows of one puzzle; a run longer than the puzzle is
  several whole visits (the same puzzle drawn again across an epoch seam).
  Only the batch's last visit may take fewer examples than the puzzle has.
  """
  sizes = np.diff(split.puzzle_indices)
  starts = split.puzzle_indices
  rows, owners = np.asarray(rows), np.asarray(owners)
  assert np.all((rows >= starts[owners]) & (rows < starts[owners + 1]))
  new_run = np.concatenate([[True], owners[1:] != owners[:-1]])
  run_start = np.maximum.accumulate(np.where(new_run, np.arange(rows.size), 0))
  offset = np.arange(rows.size) - run_start
  visit = np.cumsum(offset % sizes[owners] == 0) - 1  # Visit id per row.
  taken = np.bincount(visit)
  puzzle = owners[np.flatnonzero(offset % sizes[owners] == 0)]
  order = np.lexsort((rows, visit))  # No example twice within a visit.
  same = (visit[order][1:] == visit[order][:-1])
  assert not np.any(same & (rows[order][1:] == rows[order][:-1]))
  assert np.all(taken[:-1] == sizes[puzzle[:-1]])
  return puzzle, taken


def _iteration_stats(batches, split, epochs):
  """Per-iteration statistics of a list of (rows, owners) batches."""
  puzzle_group = np.repeat(np.arange(split.num_groups),
                           np.diff(split.group_indices))
  sizes = np.diff(split.puzzle_indices)
  visits = [_visits(rows, owners, split) for rows, owners in batches]
  puzzle = np.concatenate([p for p, _ in visits])
  taken = np.concatenate([t for _, t in visits])
  per_group = np.bincount(puzzle_group[puzzle], minlength=split.num_groups)
  per_puzzle = np.bincount(puzzle, minlength=sizes.size)
  per_example = np.bincount(np.concatenate([r for r, _ in batches]),
                            minlength=split.num_examples)
  truncated = int(np.sum(taken < sizes[puzzle]))
  return {"batches": len(batches), "per_group": per_group,
          "per_puzzle": per_puzzle, "per_example": per_example,
          "truncated": truncated, "visits": puzzle.size,
          "short_groups": int(np.sum(per_group < epochs))}


def test_sudoku_1k_shape_visits_match_the_reference():
  # Sudoku/Maze-1k: 1000 groups of one-example puzzles (3 per group here, to
  # see the puzzle choice too), batch 768, eval_interval 2000 epochs.
  groups, batch, epochs = 1000, 768, 2000
  split = _split([3] * groups, [1] * (3 * groups))
  ours = _ours(data.TrainSampler(split, batch, seed=0,
                                 epochs_per_iteration=epochs), 0)
  ref = list(_reference_iteration(split.group_indices, split.puzzle_indices,
                                  batch, epochs, 0, 1,
                                  np.random.default_rng(0)))
  mine = _iteration_stats(ours, split, epochs)
  theirs = _iteration_stats(ref, split, epochs)
  print("\nSudoku-1k shape, one iteration (ours | reference):")
  for key in ("batches", "visits", "short_groups", "truncated"):
    print(f"  {key}: {mine[key]} | {theirs[key]}")
  print(f"  per-group visits: {mine['per_group'].min()}-"
        f"{mine['per_group'].max()} | {theirs['per_group'].min()}-"
        f"{theirs['per_group'].max()}")
  print(f"  per-puzzle visits mean/std: {mine['per_puzzle'].mean():.2f}/"
        f"{mine['per_puzzle'].std():.2f} | {theirs['per_puzzle'].mean():.2f}/"
        f"{theirs['per_puzzle'].std():.2f}")
  # 2,000,000 visits // 768 = 2604 batches; the 128 visits of the dropped
  # partial batch are all in the last epoch: 128 groups seen 1999 times.
  assert mine["batches"] == theirs["batches"] == 2604
  assert sampler_lib.iteration_batches(groups, epochs, batch) == 2604
  for stats in (mine, theirs):
    assert stats["visits"] == 2604 * 768 and stats["truncated"] == 0
    np.testing.assert_array_equal(np.bincount(stats["per_group"])[1999:],
                                  [128, 872])
    # One puzzle per visit, uniformly: binomial(~2000, 1/3) per puzzle.
    np.testing.assert_allclose(stats["per_puzzle"].mean(), 2604 * 768 / 3000)
    assert 0.85 < stats["per_puzzle"].std() / np.sqrt(2000 * 2 / 9) < 1.15


def _arc_shaped_split():
  """40 groups of 1-6 puzzles with 1-8 examples each (fixed draw)."""
  rng = np.random.default_rng(1234)
  per_group = rng.integers(1, 7, 40)
  return _split(per_group, rng.integers(1, 9, per_group.sum()))


def test_arc_shape_visit_distributions_match_the_reference():
  split = _arc_shaped_split()
  batch, epochs, iterations = 96, 20, 40
  mean_epoch = sum(np.diff(split.puzzle_indices)[lo:hi].mean() for lo, hi in
                   zip(split.group_indices[:-1], split.group_indices[1:]))
  assert batch < mean_epoch < 2 * batch  # Old rule: one batch per epoch.
  sampler = data.TrainSampler(split, batch, seed=5,
                              epochs_per_iteration=epochs)
  example_rng = np.random.default_rng(5)
  mine, theirs = [], []
  for i in range(iterations):
    ours = _ours(sampler, i)
    assert len(ours) == sampler.batches_in_iteration(i)
    mine.append(_iteration_stats(ours, split, epochs))
    ref = list(_reference_iteration(split.group_indices, split.puzzle_indices,
                                    batch, epochs, 5, i + 1, example_rng))
    theirs.append(_iteration_stats(ref, split, epochs))

  def pooled(stats, key):
    return np.array([s[key] for s in stats], np.float64)

  print(f"\nARC shape, {iterations} iterations of {epochs} epochs, batch "
        f"{batch} (ours | reference):")
  for key in ("batches", "short_groups", "truncated", "visits"):
    a, b = pooled(mine, key), pooled(theirs, key)
    print(f"  {key} per iteration: mean {a.mean():.2f} sd {a.std():.2f} | "
          f"mean {b.mean():.2f} sd {b.std():.2f}")
    # Means agree within 4 standard errors of their difference.
    se = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / iterations)
    assert abs(a.mean() - b.mean()) <= 4 * se + 1e-9, key
  # Batches run across epoch seams: ~1.4 batches per epoch, not 1 (the old
  # per-epoch rule); every group is seen epochs or epochs-1 times.
  assert pooled(mine, "batches").mean() > 1.25 * epochs
  for stats in mine + theirs:
    assert set(np.unique(stats["per_group"])) <= {epochs - 1, epochs}
    assert stats["truncated"] <= stats["batches"]  # One cut visit per batch.

  # Puzzle choice within a group and example choice within a puzzle.
  groups = zip(split.group_indices[:-1], split.group_indices[1:])
  visits = {name: sum(s["per_puzzle"] for s in stats)
            for name, stats in (("ours", mine), ("ref", theirs))}
  tv = []
  for lo, hi in groups:
    a, b = visits["ours"][lo:hi], visits["ref"][lo:hi]
    tv.append(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())
  print(f"  puzzle-choice total variation per group: mean {np.mean(tv):.3f} "
        f"max {np.max(tv):.3f}")
  assert np.mean(tv) < 0.05 and np.max(tv) < 0.15
  sizes = np.diff(split.puzzle_indices)
  owner = np.repeat(np.arange(sizes.size), sizes)
  first = split.puzzle_indices[:-1][sizes > 1]  # Each puzzle's first example
  last = split.puzzle_indices[1:][sizes > 1] - 1  # and its last one.
  kept = {}
  for name, stats in (("ours", mine), ("ref", theirs)):
    # Examples kept / examples offered: what truncation leaves. A truncated
    # visit keeps a uniform subset, so first and last examples fare alike.
    ratio = sum(s["per_example"] for s in stats) / visits[name][owner]
    kept[name] = ratio.mean()
    print(f"  {name}: example visits / puzzle visits: mean {ratio.mean():.4f}"
          f" min {ratio.min():.3f}; first vs last example of a puzzle "
          f"{ratio[first].mean():.4f} vs {ratio[last].mean():.4f}")
    assert ratio.max() <= 1.0 and ratio.min() > 0.85
    assert abs(ratio[first].mean() - ratio[last].mean()) < 0.01
  assert abs(kept["ours"] - kept["ref"]) < 0.005


def test_batches_in_iteration_matches_the_stream_on_arc_shape():
  split = _arc_shaped_split()
  for batch, epochs in ((96, 3), (512, 8), (8, 1)):
    sampler = data.TrainSampler(split, batch, seed=2,
                                epochs_per_iteration=epochs)
    for i in range(3):
      assert len(_ours(sampler, i)) == sampler.batches_in_iteration(i)
      assert sampler.epoch == (i + 1) * epochs
