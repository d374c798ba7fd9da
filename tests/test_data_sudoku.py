"""Sudoku: encoding, solver, generator, augmentation, CSV reading and errors."""

import numpy as np
import pytest

from hrm_jax import data
from hrm_jax.data import seeding
from hrm_jax.data import sudoku
from hrm_jax.data import sudoku_solver as solver

# A known valid 9x9 grid (rows shifted by 3 / 1 within bands).
_GRID = np.array([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)]
                  for r in range(9)], np.int8)


def _valid(board):
  return sudoku.solution_problem(np.zeros_like(board), board) is None


def test_reference_grid_is_valid():
  assert _valid(_GRID)
  broken = _GRID.copy()
  broken[0, 0], broken[0, 1] = broken[0, 1], broken[0, 0]
  # Swapping the first two cells of row 1 breaks columns 1 and 2 (counted from 1).
  assert sudoku.solution_problem(np.zeros_like(broken), broken) == (
      "solution column 1 is not a permutation of 1..9")


@pytest.mark.parametrize("n", [4, 6, 9])
def test_encode_decode_round_trip(n):
  rng = np.random.default_rng(n)
  board = rng.integers(0, n + 1, (n, n)).astype(np.int8)
  tokens = sudoku.encode(board)
  assert tokens.shape == (n * n,) and tokens.min() >= 1
  assert tokens.max() <= sudoku.vocab_size(n) - 1
  np.testing.assert_array_equal(sudoku.decode(tokens), board)


def test_encoding_matches_reference():
  # Reference §5.3: blank -> 1, digit d -> d + 1, vocab 11.
  board = np.zeros((9, 9), np.int8)
  board[0, :3] = [5, 0, 9]
  tokens = sudoku.encode(board)
  assert tokens[:4].tolist() == [6, 1, 10, 1]
  assert sudoku.vocab_size(9) == 11


@pytest.mark.parametrize("n", [4, 6, 9])
def test_augmentation_keeps_boards_valid(n):
  geo = solver.geometry_for(n)
  rng = np.random.default_rng(0)
  grid = solver.random_solution(geo, rng)
  assert _valid(grid)
  puzzle = grid.copy()
  puzzle[rng.random((n, n)) < 0.5] = 0
  transposed = 0
  for _ in range(40):
    tf = sudoku.random_transform(n, rng)
    transposed += tf["transpose"]
    q, a = sudoku.apply_transform(puzzle, tf), sudoku.apply_transform(grid, tf)
    assert _valid(a), tf
    assert sudoku.solution_problem(q, a) is None
    np.testing.assert_array_equal(q == 0, sudoku.apply_transform(
        (puzzle == 0).astype(np.int8), {**tf, "digit_map": np.arange(n + 1)})
                                  .astype(bool))
  # Transpose is drawn for square boxes only (a 6x6 board has 2x3 boxes).
  assert (transposed > 0) == (n != 6)


def test_augmentation_is_seeded():
  a = sudoku.random_transform(9, seeding.rng(3, "x"))
  b = sudoku.random_transform(9, seeding.rng(3, "x"))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_solver_counts_solutions_and_rates():
  puzzle = _GRID.copy()
  puzzle[0, :] = 0  # One empty row: still unique.
  sols, _ = solver.solve(puzzle)
  assert len(sols) == 1
  np.testing.assert_array_equal(sols[0], _GRID)
  empty = np.zeros((4, 4), np.int8)
  assert solver.count_solutions(empty) == 2  # Capped at the limit.
  bad = _GRID.copy()
  bad[0, 0] = bad[0, 1]
  assert solver.count_solutions(bad) == 0
  assert solver.rating(puzzle) == 0


def test_generator_unique_rated_and_deterministic():
  q, a, r = sudoku.generate(9, 2, seed=5, tag="t", min_rating=3)
  q2, _, r2 = sudoku.generate(9, 2, seed=5, tag="t", min_rating=3)
  np.testing.assert_array_equal(q, q2)
  np.testing.assert_array_equal(r, r2)
  for puzzle, sol, rating in zip(q, a, r):
    assert rating >= 3 and solver.rating(puzzle) == rating
    sols, _ = solver.solve(puzzle)
    assert len(sols) == 1
    np.testing.assert_array_equal(sols[0], sol)
    assert _valid(sol)
    # Minimal: removing any remaining clue breaks uniqueness.
    clue = tuple(np.argwhere(puzzle != 0)[0])
    weaker = puzzle.copy()
    weaker[clue] = 0
    assert solver.count_solutions(weaker) == 2
  q3 = sudoku.generate(9, 1, seed=6, tag="t")[0]
  assert not np.array_equal(q[0], q3[0])


def test_small_board_generation_hits_blank_count():
  q, a, _ = sudoku.generate(6, 5, seed=0, tag="train", num_blanks=16)
  assert q.shape == (5, 6, 6)
  assert np.all((q == 0).sum(axis=(1, 2)) == 16)
  for puzzle, sol in zip(q, a):
    assert solver.count_solutions(puzzle) == 1
    assert sudoku.solution_problem(puzzle, sol) is None


def test_generation_independent_of_worker_count():
  one = sudoku.generate(4, 6, seed=1, tag="w", num_blanks=8, num_workers=1)
  two = sudoku.generate(4, 6, seed=1, tag="w", num_blanks=8, num_workers=2)
  np.testing.assert_array_equal(one[0], two[0])


def test_impossible_generation_request_errors():
  with pytest.raises(data.DataError, match="lower min_rating"):
    sudoku.generate(4, 1, seed=0, tag="t", num_blanks=8, min_rating=10**6)


def _write_csv(path, rows, header="source,q,a,rating"):
  path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))


def _csv_rows(count, seed):
  q, a, r = sudoku.generate(9, count, seed=seed, tag="csv")
  rows = []
  for puzzle, sol, rating in zip(q, a, r):
    text = "".join(str(d) for d in puzzle.reshape(-1)).replace("0", ".")
    rows.append(("gen", text, "".join(str(d) for d in sol.reshape(-1)),
                 str(rating)))
  return rows


def test_csv_subsample_is_seeded(tmp_path):
  rows = _csv_rows(6, 0)
  _write_csv(tmp_path / "train.csv", rows)
  q1, a1 = sudoku._read_csv(str(tmp_path / "train.csv"), 9, 3, 0, 7, "train")
  q2, _ = sudoku._read_csv(str(tmp_path / "train.csv"), 9, 3, 0, 7, "train")
  q3, _ = sudoku._read_csv(str(tmp_path / "train.csv"), 9, 3, 0, 8, "train")
  np.testing.assert_array_equal(q1, q2)
  assert q1.shape == (3, 9, 9) and not np.array_equal(q1, q3)
  assert sudoku.solution_problems(q1, a1) is None
  everything, _ = sudoku._read_csv(str(tmp_path / "train.csv"), 9, 0, 0, 7, "x")
  assert len(everything) == 6
  hard = [int(r[3]) for r in rows]
  rated, _ = sudoku._read_csv(str(tmp_path / "train.csv"), 9, 0,
                              sorted(hard)[3], 7, "x")
  assert len(rated) == sum(h >= sorted(hard)[3] for h in hard)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: (r[0], r[1][:-1], r[2], r[3]), "row 2: expected 81 characters"),
    (lambda r: (r[0], "x" + r[1][1:], r[2], r[3]), "unknown character 'x'"),
    (lambda r: (r[0], r[1], r[2][1:] + r[2][0], r[3]), "row 2: solution"),
])
def test_malformed_csv_rows_name_the_problem(tmp_path, mutate, message):
  rows = _csv_rows(1, 1)
  _write_csv(tmp_path / "train.csv", [mutate(rows[0])])
  with pytest.raises(data.DataError, match=message) as err:
    sudoku._read_csv(str(tmp_path / "train.csv"), 9, 0, 0, 0, "train")
  assert "train.csv" in str(err.value)


def test_csv_missing_file_and_bad_header(tmp_path):
  with pytest.raises(data.DataError, match="file not found"):
    sudoku._read_csv(str(tmp_path / "nope.csv"), 9, 0, 0, 0, "t")
  _write_csv(tmp_path / "bad.csv", [], header="puzzle,solution")
  with pytest.raises(data.DataError, match="columns 'q' and 'a'"):
    sudoku._read_csv(str(tmp_path / "bad.csv"), 9, 0, 0, 0, "t")


def _plan_boards(plan, split):
  groups = list(plan.make_groups(split))
  return [sudoku.decode(g.inputs[0]).reshape(-1) for g in groups]


def test_min_rating_filters_the_csv_test_split_too(tmp_path):
  # The reference's --min-difficulty drops easy rows of test.csv as well.
  train_rows, test_rows = _csv_rows(4, 2), _csv_rows(8, 3)
  _write_csv(tmp_path / "train.csv", train_rows)
  _write_csv(tmp_path / "test.csv", test_rows)
  ratings = sorted(int(r[3]) for r in test_rows)
  threshold = ratings[len(ratings) // 2]
  assert ratings[0] < threshold  # Some test rows must go.
  cfg = data.default_config("sudoku")
  cfg.update(source=f"csv:{tmp_path}", train_size=0, num_aug=0,
             min_rating=threshold)
  plan = sudoku.plan(cfg, progress=lambda m: None)
  want = [r[1].replace(".", "0") for r in test_rows if int(r[3]) >= threshold]
  got = ["".join(map(str, b)) for b in _plan_boards(plan, "test")]
  assert got == want and plan.num_groups["test"] == len(want)
  kept_train = [r for r in train_rows if int(r[3]) >= threshold]
  assert plan.num_groups["train"] == len(kept_train)


def test_generated_test_puzzles_obey_min_rating():
  cfg = data.default_config("sudoku")
  cfg.update(source="generate", train_size=1, test_size=2, num_aug=0,
             min_rating=3, num_workers=1)
  plan = sudoku.plan(cfg, progress=lambda m: None)
  boards = _plan_boards(plan, "test")
  assert len(boards) == 2
  for board in boards:
    assert solver.rating(board.reshape(9, 9).astype(np.int8)) >= 3
