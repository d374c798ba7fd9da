"""Bad data fails when it is built or loaded, naming file, row and column.

Covers `puzzles.validate_arrays` (every split `load` returns, `npy:` files
read in place), whole-file CSV checks, ARC tasks without pairs, the
content hash that names a build, and the clean-up after a failed build.
"""

import json
import os
import time

import numpy as np
import pytest

from hrm_jax import data
from hrm_jax.data import arc_tasks
from hrm_jax.data import config as config_lib
from hrm_jax.data import maze
from hrm_jax.data import npy_format
from hrm_jax.data import puzzles
from hrm_jax.data import sudoku

# A valid 9x9 grid (rows shifted by 3 / 1 within bands).
_GRID = np.array([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)]
                  for r in range(9)], np.int8)


# ----------------------------------------------------------------- npy: files


def _toy_split(seq=4, vocab=6):
  """3 groups: puzzles of sizes [2, 1], [3], [1, 1]; ids 1..5; vocab 6."""
  sizes, groups = [2, 1, 3, 1, 1], [2, 1, 2]
  n = sum(sizes)
  rng = np.random.default_rng(0)
  meta = puzzles.DatasetMetadata(
      vocab_size=vocab, seq_len=seq, num_puzzle_identifiers=6, pad_id=0,
      ignore_label_id=0, blank_identifier_id=0, total_groups=len(groups),
      mean_puzzle_examples=n / len(sizes))
  return puzzles.PuzzleSplit(
      inputs=rng.integers(1, vocab, (n, seq)).astype(np.uint8),
      labels=rng.integers(0, vocab, (n, seq)).astype(np.uint8),
      puzzle_identifiers=np.arange(1, 6, dtype=np.int32),
      puzzle_indices=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
      group_indices=np.concatenate([[0], np.cumsum(groups)]).astype(np.int64),
      metadata=meta, identifiers=["<blank>"] + [f"p{i}" for i in range(1, 6)])


def _npy_root(tmp_path):
  root = tmp_path / "npy"
  for split in ("train", "test"):
    npy_format.write_split(_toy_split(), str(root), split)
  return root


def _load_npy(root, split="train"):
  cfg = data.default_config("sudoku")
  cfg.source = f"npy:{root}"
  return data.load(cfg, split)


def _rewrite(root, field, change, split="train"):
  path = root / split / f"all__{field}.npy"
  value = np.load(path)
  value = change(value)
  np.save(path, value)
  return path


def test_valid_npy_dataset_loads(tmp_path):
  split = _load_npy(_npy_root(tmp_path))
  want = _toy_split()
  np.testing.assert_array_equal(split.inputs, want.inputs)
  np.testing.assert_array_equal(split.group_indices, want.group_indices)


def _set(index, value, dtype=None):
  def change(a):
    a = a.astype(dtype or a.dtype)
    a[index] = value
    return a
  return change


@pytest.mark.parametrize("field, change, message", [
    # A token >= vocab_size used to reach the model: NaN at step 1.
    ("inputs", _set((4, 2), 6), r"train/all__inputs.npy row 4, column 2 "
     r"holds 6, not a token id: vocab_size is 6"),
    ("labels", _set((6, 3), 200), r"train/all__labels.npy row 6, column 3 "
     r"holds 200"),
    # int32 on disk: a negative id would wrap around in the uint8 cast.
    ("inputs", _set((0, 0), -3, np.int32), r"all__inputs.npy row 0, column "
     r"0 holds -3"),
    # Puzzle ids out of range used to train silently.
    ("puzzle_identifiers", _set(3, 6), r"all__puzzle_identifiers.npy row 3 "
     r"\(puzzle 3\) holds 6, outside \[0, 6\)"),
    ("puzzle_identifiers", _set(0, -1), r"row 0 \(puzzle 0\) holds -1"),
    # Bad group_indices used to give a raw IndexError in the sampler.
    ("group_indices", _set(0, 1), r"all__group_indices.npy must start at 0"),
    ("group_indices", _set(2, 2), r"all__group_indices.npy entry 2 \(2\) is "
     r"not above entry 1 \(2\): group 1 would have no puzzles"),
    ("group_indices", _set(3, 4), r"group_indices.npy ends at 4, but there "
     r"are 5 puzzles"),
    ("group_indices", lambda a: a[:-1], r"ends at 3, but there are 5"),
    ("puzzle_indices", _set(3, 3), r"all__puzzle_indices.npy entry 3 \(3\) "
     r"is not above entry 2 \(3\): puzzle 2 would have no examples"),
    ("puzzle_indices", _set(5, 9), r"puzzle_indices.npy ends at 9, but "
     r"there are 8 examples"),
])
def test_bad_npy_values_name_file_row_and_column(tmp_path, field, change,
                                                 message):
  root = _npy_root(tmp_path)
  _rewrite(root, field, change)
  with pytest.raises(data.DataError, match=message) as err:
    _load_npy(root)
  assert str(root) in str(err.value)
  assert "dataset.json" in str(err.value)  # The fix names what to correct.
  _load_npy(root, "test")  # The untouched split still loads.


def test_label_may_equal_an_ignore_id_outside_the_vocabulary(tmp_path):
  root = _npy_root(tmp_path)
  meta_path = root / "train" / "dataset.json"
  meta = json.loads(meta_path.read_text())
  meta["ignore_label_id"] = 255
  meta_path.write_text(json.dumps(meta))
  _rewrite(root, "labels", _set((1, 1), 255))
  assert _load_npy(root).labels[1, 1] == 255
  _rewrite(root, "labels", _set((1, 2), 254))
  with pytest.raises(data.DataError, match=r"row 1, column 2 holds 254.*"
                     r"or ignore_label_id 255"):
    _load_npy(root)


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b"not an npy file at all"),
     "not a readable .npy file"),
    (lambda p: np.save(p, np.zeros((8, 4), np.float32)), "dtype float32"),
    (lambda p: np.save(p, np.zeros(32, np.uint8)), r"shape \(32,\); "
     "'inputs' must be 2-D"),
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)),
     "not a readable .npy file"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable .npy"),
])
def test_unreadable_npy_files_name_the_file(tmp_path, write, message):
  root = _npy_root(tmp_path)
  path = root / "train" / "all__inputs.npy"
  if "read_bytes" not in write.__code__.co_names:
    path.unlink()
  write(path)
  with pytest.raises(data.DataError, match=message) as err:
    _load_npy(root)
  assert str(path) in str(err.value)


def test_npz_archive_and_bad_dataset_json_name_the_file(tmp_path):
  root = _npy_root(tmp_path)
  path = root / "train" / "all__labels.npy"
  with open(path, "wb") as f:
    np.savez(f, labels=np.zeros((8, 4), np.uint8))
  with pytest.raises(data.DataError, match=r"all__labels.npy: an .npz"):
    _load_npy(root)
  (root / "test" / "dataset.json").write_text("{not json")
  with pytest.raises(data.DataError, match=r"test/dataset.json: invalid JSON"):
    _load_npy(root, "test")


def test_validation_is_fast_enough_for_paper_scale_arc():
  # ARC train is ~4M x 900 = 3.6G tokens; 100M here (inputs + labels).
  n, seq = 111_112, 900
  inputs = np.full((n, seq), 11, np.uint8)
  labels = np.full((n, seq), 11, np.uint8)
  kwargs = dict(puzzle_identifiers=np.ones(n, np.int32),
                puzzle_indices=np.arange(n + 1), group_indices=np.arange(n + 1),
                vocab_size=12, seq_len=seq, num_puzzle_identifiers=2,
                ignore_label_id=0, origin="big")
  start = time.perf_counter()
  puzzles.validate_arrays(inputs, labels, **kwargs)
  assert time.perf_counter() - start < 1.0  # Measured: ~0.02 s.
  labels[-1, -1] = 12
  with pytest.raises(data.DataError, match=r"labels row 111111, column 899"):
    puzzles.validate_arrays(inputs, labels, **kwargs)


def test_tfds_built_splits_are_validated_on_load(tmp_path, monkeypatch):
  """A build whose arrays disagree with its metadata never reaches training
  (here a planner giving puzzle id 3 with 1 identifier)."""
  def bad_plan(cfg, progress):
    del cfg, progress
    def groups(split):
      del split
      yield puzzles.Group(np.ones((1, 36), np.uint8), np.ones((1, 36),
                                                              np.uint8),
                          np.array([3], np.int32), np.ones(1, np.int32))
    return puzzles.DatasetPlan(
        vocab_size=8, seq_len=36, ignore_label_id=0, identifiers=["<blank>"],
        num_groups={"train": 1, "test": 1}, make_groups=groups)
  monkeypatch.setattr(data.family("sudoku"), "plan", bad_plan)
  cfg = data.default_config("sudoku")
  cfg.update(data_dir=str(tmp_path), board_size=6, train_size=1, test_size=1)
  with pytest.raises(data.DataError, match=r"hrm_sudoku/generate_\w+ train "
                     r"split in .*puzzle_identifiers row 0 \(puzzle 0\) holds "
                     r"3, outside \[0, 1\).*delete .*to rebuild"):
    data.load(cfg, "train")


# ------------------------------------------------------------------------ CSV


def _sudoku_row(k, blank=40):
  """A valid (puzzle, solution) pair: _GRID with digits relabelled by k."""
  perm = np.roll(np.arange(1, 10), k)
  solution = perm[_GRID - 1]
  puzzle = solution.copy()
  puzzle.reshape(-1)[np.random.default_rng(k).permutation(81)[:blank]] = 0
  to_text = lambda b: "".join(str(d) for d in b.reshape(-1))
  return ["gen", to_text(puzzle).replace("0", "."), to_text(solution), "5"]


def _write_sudoku(path, rows):
  path.write_text("source,q,a,rating\n" +
                  "".join(",".join(r) + "\n" for r in rows))


@pytest.mark.parametrize("column, mutate, message", [
    (1, lambda t: t[:40] + "x" + t[41:], r"row 9: unknown character 'x' in "
     r"column 'q' at position 40"),
    (2, lambda t: t[:-1], r"row 9: expected 81 characters in column 'a', "
     "got 80"),
    (2, lambda t: t[1:] + t[0], r"row 9: solution .* \(columns 'q' and 'a'\)"),
    (1, lambda t: ("9" if t[0] != "9" else "8") + t[1:],
     "row 9: solution contradicts a given digit"),
])
def test_every_sudoku_row_is_checked_not_only_the_sampled(tmp_path, column,
                                                           mutate, message):
  rows = [_sudoku_row(k) for k in range(12)]
  rows[7][column] = mutate(rows[7][column])  # File line 9 (header is 1).
  _write_sudoku(tmp_path / "train.csv", rows)
  for size in (1, 3, 0):  # A sample of 1, of 3 or every row: all fail.
    with pytest.raises(data.DataError, match=message) as err:
      sudoku._read_csv(str(tmp_path / "train.csv"), 9, size, 0, 0, "train")
    assert "train.csv" in str(err.value)
  del rows[7]  # Without the bad row the same sample reads.
  _write_sudoku(tmp_path / "good.csv", rows)
  q, a = sudoku._read_csv(str(tmp_path / "good.csv"), 9, 1, 0, 0, "train")
  assert q.shape == (1, 9, 9) and sudoku.solution_problems(q, a) is None


def test_sudoku_rows_are_checked_across_chunks(tmp_path, monkeypatch):
  monkeypatch.setattr(sudoku, "_CHECK_ROWS", 4)
  rows = [_sudoku_row(k) for k in range(11)]
  _write_sudoku(tmp_path / "train.csv", rows)
  q, _ = sudoku._read_csv(str(tmp_path / "train.csv"), 9, 0, 0, 0, "train")
  assert len(q) == 11
  for bad in (3, 4, 10):  # End of a chunk, start of one, the last part.
    broken = [list(r) for r in rows]
    broken[bad][1] = "?" + broken[bad][1][1:]
    _write_sudoku(tmp_path / "bad.csv", broken)
    with pytest.raises(data.DataError, match=f"row {bad + 2}: unknown"):
      sudoku._read_csv(str(tmp_path / "bad.csv"), 9, 2, 0, 0, "train")
  broken = [list(r) for r in rows]
  broken[1][1] = "?" + broken[1][1][1:]  # Reported before a later bad row.
  broken[2] = broken[2][:3]
  _write_sudoku(tmp_path / "both.csv", broken)
  with pytest.raises(data.DataError, match="row 3: unknown"):
    sudoku._read_csv(str(tmp_path / "both.csv"), 9, 2, 0, 0, "train")


def test_sudoku_errors_give_file_lines_after_multiline_fields(tmp_path):
  rows = [_sudoku_row(k) for k in range(3)]
  rows[0][0] = '"two\nlines"'  # A quoted field spanning lines 2 and 3.
  rows[2][1] = "x" + rows[2][1][1:]
  _write_sudoku(tmp_path / "train.csv", rows)
  with pytest.raises(data.DataError, match="train.csv row 5: unknown"):
    sudoku._read_csv(str(tmp_path / "train.csv"), 9, 1, 0, 0, "train")
  rows[2] = _sudoku_row(2)
  rows[1][3] = "hard"
  _write_sudoku(tmp_path / "train.csv", rows)
  with pytest.raises(data.DataError, match="row 4: bad rating 'hard'"):
    sudoku._read_csv(str(tmp_path / "train.csv"), 9, 1, 3, 0, "train")


@pytest.mark.parametrize("text", ["source,q,a,rating\n", ""])
def test_header_only_or_empty_csv_says_no_data_rows(tmp_path, text):
  (tmp_path / "train.csv").write_text(text)
  with pytest.raises(data.DataError, match="train.csv: .*no data rows"):
    sudoku._read_csv(str(tmp_path / "train.csv"), 9, 0, 0, 0, "train")
  with pytest.raises(data.DataError, match="train.csv: .*no data rows"):
    maze.read_csv(str(tmp_path / "train.csv"), 7)


def _maze_rows(count=3):
  inputs, labels, _ = maze.generate(7, count, 8, 0.0, 0, "t")
  return [[maze.decode(x), maze.decode(y)] for x, y in zip(inputs, labels)]


def _write_maze(path, rows):
  path.write_text("source,q,a,rating\n" +
                  "".join(f"gen,{q},{a},0\n" for q, a in rows))


def test_maze_rows_name_line_and_column(tmp_path):
  rows = _maze_rows()
  wall = rows[2][1].index("#")
  rows[2][1] = rows[2][1][:wall] + "o" + rows[2][1][wall + 1:]
  _write_maze(tmp_path / "train.csv", rows)
  with pytest.raises(data.DataError, match=(
      rf"train.csv row 4: label differs .* position {wall} \(grid row "
      rf"{wall // 7 + 1}, column {wall % 7 + 1}\) is '#' in column 'q' but "
      r"'o' in column 'a'")):
    maze.read_csv(str(tmp_path / "train.csv"), 7, limit=1)
  rows = _maze_rows()
  rows[1][1] = rows[1][1][:5] + "?" + rows[1][1][6:]
  _write_maze(tmp_path / "train.csv", rows)
  with pytest.raises(data.DataError, match=r"row 3: unknown character '\?' "
                     r"at position 5 \(allowed: '# SGo'\) in column 'a'"):
    maze.read_csv(str(tmp_path / "train.csv"), 7, limit=1)


def test_bad_csv_row_outside_train_size_fails_the_build(tmp_path):
  root = tmp_path / "csv"
  root.mkdir()
  rows = [_sudoku_row(k) for k in range(6)]
  _write_sudoku(root / "test.csv", rows[:2])
  rows[5][2] = rows[5][2][:80] + "0"  # A blank in a solution.
  _write_sudoku(root / "train.csv", rows)
  cfg = data.default_config("sudoku")
  cfg.update(data_dir=str(tmp_path / "tfds"), source=f"csv:{root}",
             train_size=1, num_aug=1)
  with pytest.raises(data.DataError, match=r"train.csv row 7: solution"):
    data.load(cfg, "train")
  assert not (tmp_path / "tfds").exists()  # Nothing half-built is left.


# ------------------------------------------------------------------------ ARC


@pytest.mark.parametrize("task, missing", [
    ({"train": [], "test": [{"input": [[1]], "output": [[2]]}]}, "train"),
    ({"train": [{"input": [[1]], "output": [[2]]}], "test": []}, "test"),
])
def test_arc_task_without_pairs_names_task_and_file(tmp_path, task, missing):
  root = tmp_path / "ARC"
  (root / "evaluation").mkdir(parents=True)
  (root / "evaluation" / "empty1.json").write_text(json.dumps(task))
  with pytest.raises(data.DataError, match=(
      rf"evaluation/empty1.json task empty1: no {missing} pairs")):
    arc_tasks.load_tasks(f"dirs:{root}")
  # A task to solve needs only its test inputs (solve.py checks those).
  parsed = arc_tasks.parse_task(task, "empty1", "", "f.json",
                                test_outputs_required=False)
  assert len(parsed.train) + len(parsed.test) == 1


def test_arc_pairs_must_be_a_list(tmp_path):
  with pytest.raises(data.DataError, match="'train' must be a list of pairs"):
    arc_tasks.parse_task({"train": {"input": [[1]]}, "test": []}, "t", "", "f.json")


# -------------------------------------------------------- build names, clean-up


def test_build_hash_follows_file_content_not_size(tmp_path):
  root = tmp_path / "csv"
  root.mkdir()
  rows = [_sudoku_row(k) for k in range(3)]
  _write_sudoku(root / "train.csv", rows)
  _write_sudoku(root / "test.csv", rows[:1])
  cfg = data.default_config("sudoku")
  cfg.source = f"csv:{root}"
  before = config_lib.config_name(cfg)
  assert config_lib.config_name(cfg) == before
  size = os.path.getsize(root / "train.csv")
  rows[0], rows[1] = rows[1], rows[0]  # Same bytes, other order.
  _write_sudoku(root / "train.csv", rows)
  assert os.path.getsize(root / "train.csv") == size
  assert config_lib.config_name(cfg) != before
  task = {"train": [{"input": [[1]], "output": [[2]]}],
          "test": [{"input": [[3]], "output": [[4]]}]}
  (tmp_path / "ARC" / "training").mkdir(parents=True)
  path = tmp_path / "ARC" / "training" / "t1.json"
  path.write_text(json.dumps(task))
  acfg = data.default_config("arc")
  acfg.source = f"dirs:{tmp_path / 'ARC'}"
  first = config_lib.config_name(acfg)
  path.write_text(json.dumps(task).replace("[[4]]", "[[5]]"))
  assert config_lib.config_name(acfg) != first


def test_file_digest_cache_sees_an_old_file_edited(tmp_path):
  path = tmp_path / "f.csv"
  path.write_text("abc")
  old = time.time() - 60
  os.utime(path, (old, old))
  first = config_lib.file_digest(str(path))
  assert str(path) in config_lib._DIGESTS  # Old enough to be cached.
  path.write_text("abd")
  os.utime(path, (old, old))  # Same size and mtime; ctime still moves.
  assert config_lib.file_digest(str(path)) != first


def test_failed_build_leaves_no_dataset_directory(tmp_path):
  good = data.default_config("sudoku")
  good.update(data_dir=str(tmp_path), board_size=4, num_blanks=4,
              train_size=2, test_size=2, num_aug=1, num_workers=1)
  data.load(good, "train")
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  root = tmp_path / "csv"
  root.mkdir()
  _write_sudoku(root / "train.csv", [])
  _write_sudoku(root / "test.csv", [_sudoku_row(0)])
  bad = data.default_config("sudoku")
  bad.update(data_dir=str(tmp_path), source=f"csv:{root}")
  with pytest.raises(data.DataError, match="no data rows"):
    data.load(bad, "train")
  after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                 if not p.is_relative_to(root))
  assert after == [p for p in before if p != root.relative_to(tmp_path)]
  assert data.load(good, "test").num_examples == 2  # Other builds intact.


def test_empty_split_is_a_clear_error_not_a_tfds_assertion(tmp_path):
  cfg = data.default_config("sudoku")
  cfg.update(data_dir=str(tmp_path / "tfds"), board_size=4, num_blanks=4,
             train_size=2, test_size=0, num_aug=1, num_workers=1)
  with pytest.raises(data.DataError, match="gives no test puzzles"):
    data.load(cfg, "train")
  assert not (tmp_path / "tfds").exists()
