"""Sudoku: encoding, seeded augmentation, Sudoku-Extreme CSV and generated data.

Encoding (reference §5.3): PAD 0, blank 1, digit d -> d+1, row-major, so a
9x9 board has vocab 11 and seq 81 (an n x n board: vocab n+2, seq n*n).
`ignore_label_id` is 0 (PAD), which never occurs in a label: every cell,
givens included, is supervised.

Sources (config `source`):
  * "csv:<dir>": `train.csv`/`test.csv` of `sapientinc/sudoku-extreme`
    (`source,q,a,rating`, "." blank); `train_size` rows drawn with a seeded
    choice (the reference's is unseeded), optionally only rows with
    rating >= `min_rating` (in both splits, as the reference); the test
    split is all such rows of test.csv unless `test_size` > 0.
  * "hf:<repo_id>": the same files fetched with `huggingface_hub`.
  * "generate": puzzles from `sudoku_solver` (unique solutions), 9x9 rated by
    the fixed solver and kept when rating >= `min_rating`, or smaller boards
    with `num_blanks` blanks.
Train groups = original + `num_aug` augmented variants; all puzzle ids 0.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from hrm_jax.data import parallel
from hrm_jax.data import puzzles
from hrm_jax.data import qa_csv
from hrm_jax.data import seeding
from hrm_jax.data import sudoku_solver
from hrm_jax.data.errors import DataError
from hrm_jax.data.errors import where


DEFAULT_TEST_SIZE = 1000  # Generated test puzzles when test_size is -1.
# Generator's min_rating when the config says -1, for minimal 9x9 puzzles
# only (small or partly blank boards are rarely "hard" for any solver).
DEFAULT_HARD_RATING = 20


def vocab_size(n: int) -> int:
  return n + 2


def encode(board: np.ndarray) -> np.ndarray:
  """Board digits (0 = blank) of any shape -> flat uint8 tokens."""
  return (np.asarray(board).reshape(-1) + 1).astype(np.uint8)


def decode(tokens: np.ndarray) -> np.ndarray:
  """Flat tokens -> n x n board (0 = blank); PAD is not a valid cell."""
  tokens = np.asarray(tokens).reshape(-1)
  n = int(round(np.sqrt(tokens.size)))
  if n * n != tokens.size or np.any(tokens == puzzles.PAD_ID):
    raise DataError(f"not an encoded square Sudoku board: {tokens.tolist()}")
  return (tokens.astype(np.int16) - 1).astype(np.int8).reshape(n, n)


def parse_boards(texts: list[str], n: int, path, line_numbers,
                 column: str | None = None) -> np.ndarray:
  """Row-major strings ("." or "0" blank, "1".."n") -> int8 [N, n, n].

  `column` (a CSV column name) is added to error messages.
  """
  in_column = f" in column {column!r}" if column else ""
  lengths = np.fromiter(map(len, texts), np.int64, len(texts))
  wrong = np.flatnonzero(lengths != n * n)
  if wrong.size:
    i = int(wrong[0])
    raise DataError(f"{where(path, f'row {line_numbers[i]}')}expected {n * n} "
                    f"characters{in_column}, got {len(texts[i])}: "
                    f"{texts[i]!r}")
  buf = "".join(texts).replace(".", "0").encode("ascii", "replace")
  raw = np.frombuffer(buf, np.uint8).astype(np.int16) - ord("0")
  bad = np.flatnonzero((raw < 0) | (raw > n))
  if bad.size:
    row, pos = divmod(int(bad[0]), n * n)
    raise DataError(f"{where(path, f'row {line_numbers[row]}')}unknown "
                    f"character {texts[row][pos]!r}{in_column} at position "
                    f"{pos} (allowed: '.', '0'-'{n}')")
  return raw.astype(np.int8).reshape(-1, n, n)


def parse_board(text: str, n: int, path="<string>", line=1) -> np.ndarray:
  return parse_boards([text], n, path, [line])[0]


def solution_problems(puzzles_Nxnxn: np.ndarray, solutions_Nxnxn: np.ndarray):
  """First (row index, reason) why a solution is not a valid completion (the
  reason counts rows, columns and boxes from 1, as people do).

  Returns None when every solution is valid and agrees with its givens.
  """
  q, a = np.asarray(puzzles_Nxnxn), np.asarray(solutions_Nxnxn)
  num, n = a.shape[0], a.shape[1]
  if num == 0:
    return None
  geo = sudoku_solver.geometry_for(n)
  bad_given = np.any((q != 0) & (q != a), axis=(1, 2))
  boxes = a.reshape(num, n // geo.box_rows, geo.box_rows, n // geo.box_cols,
                    geo.box_cols).transpose(0, 1, 3, 2, 4).reshape(num, n, n)
  want = np.arange(1, n + 1)
  checks = [(bad_given, "solution contradicts a given digit")]
  for kind, units in (("row", a), ("column", a.transpose(0, 2, 1)),
                      ("box", boxes)):
    wrong = np.any(np.sort(units, axis=-1) != want, axis=-1)  # [N, n]
    checks.append((wrong.any(axis=1), wrong.argmax(axis=1), kind))
  first = None
  for check in checks:
    rows = np.flatnonzero(check[0])
    if rows.size and (first is None or rows[0] < first[0]):
      i = int(rows[0])
      reason = (check[1] if len(check) == 2 else
                f"solution {check[2]} {int(check[1][i]) + 1} is not a "
                f"permutation of 1..{n}")
      first = (i, reason)
  return first


def solution_problem(puzzle: np.ndarray, solution: np.ndarray) -> str | None:
  """Why `solution` is not a valid completion of `puzzle` (None if it is)."""
  found = solution_problems(puzzle[None], solution[None])
  return found and found[1]


# ---------------------------------------------------------------- augmentation


def random_transform(n: int, rng: np.random.Generator) -> dict:
  """Draws one validity-preserving symmetry (reference §5.3, seeded).

  Digit permutation, transpose with p=0.5 (only for square boxes: transposing
  a 2x3-box board would give 3x2 boxes), bands x rows-in-band and
  stacks x columns-in-stack shuffles.
  """
  geo = sudoku_solver.geometry_for(n)
  digit_map = np.concatenate([[0], rng.permutation(n) + 1])
  transpose = bool(rng.random() < 0.5) and geo.box_rows == geo.box_cols
  bands = rng.permutation(n // geo.box_rows)
  rows = np.concatenate(
      [b * geo.box_rows + rng.permutation(geo.box_rows) for b in bands])
  stacks = rng.permutation(n // geo.box_cols)
  cols = np.concatenate(
      [s * geo.box_cols + rng.permutation(geo.box_cols) for s in stacks])
  return {"digit_map": digit_map, "transpose": transpose, "rows": rows,
          "cols": cols}


def apply_transform(board: np.ndarray, tf: dict) -> np.ndarray:
  """Transpose first, then the cell permutation, then the digit map."""
  if tf["transpose"]:
    board = board.T
  return tf["digit_map"][board[np.ix_(tf["rows"], tf["cols"])]].astype(np.int8)


# -------------------------------------------------------------------- sources


# Rows parsed and checked at once while streaming: vectorised, yet ~30 MB of
# Python strings at most.
_CHECK_ROWS = 65536


def _solutions_valid(q: np.ndarray, a: np.ndarray) -> bool:
  """Fast exact screen for `solution_problems` (3x faster on 9x9 chunks):
  every row, column and box of `a` holds each digit once (the OR of 1 << d
  over a unit is then bits 1..n), and `a` keeps every given of `q`."""
  num, n = a.shape[0], a.shape[1]
  geo = sudoku_solver.geometry_for(n)
  bits = np.left_shift(1, a.astype(np.int32)).astype(
      np.int16 if n < 15 else np.int64)
  full = (1 << (n + 1)) - 2
  combine = functools.partial(functools.reduce, np.bitwise_or)
  rows = combine(bits[:, :, j] for j in range(n))
  cols = combine(bits[:, i, :] for i in range(n))
  banded = bits.reshape(num, n // geo.box_rows, geo.box_rows,
                        n // geo.box_cols, geo.box_cols)
  boxes = combine(banded[:, :, i, :, j] for i in range(geo.box_rows)
                  for j in range(geo.box_cols))
  return bool(np.all(rows == full) and np.all(cols == full) and
              np.all(boxes == full) and not np.any((q != 0) & (q != a)))


def _check_rows(path, n, rows, qi, ai, indices) -> tuple[np.ndarray,
                                                        np.ndarray]:
  """Parses and checks CSV rows (data rows `indices`, 0-based); DataError
  names the file line and column."""
  lines = qa_csv.LineNumbers(path, indices)
  q = parse_boards([r[qi] for r in rows], n, path, lines, "q")
  a = parse_boards([r[ai] for r in rows], n, path, lines, "a")
  if not _solutions_valid(q, a):
    problem = solution_problems(q, a)
    raise DataError(where(path, f"row {lines[problem[0]]}") + problem[1] +
                    " (columns 'q' and 'a')")
  return q, a


def _read_csv(path: str, n: int, size: int, min_rating: int, seed: int,
              tag: str):
  """Reads (puzzles, solutions) from a Sudoku-Extreme CSV, seeded subset.

  Two streaming passes so that the 3.8M-row train.csv never sits in memory
  as Python strings: the first checks *every* data row (field count, board
  characters, a valid solution agreeing with its givens; chunks of
  `_CHECK_ROWS` rows, vectorised) and collects ratings, so a bad row fails
  the build whether or not it is sampled; the second parses the chosen
  rows. Row numbers in messages are file line numbers (the header is 1).
  """
  with qa_csv.open_csv(path, "puzzle") as (reader, header, qi, ai):
    ri = header.index("rating") if "rating" in header else None
    if min_rating > 0 and ri is None:
      raise DataError(f"{path}: min_rating set but there is no rating column")
    width, ratings, chunk, count = len(header), [], [], 0

    def check_chunk():
      _check_rows(path, n, chunk, qi, ai, range(count - len(chunk), count))

    def fail(problem: str):
      check_chunk()  # An earlier bad row is reported first.
      raise DataError(f"{where(path, f'row {reader.line_num}')}{problem}")

    for row in reader:
      if len(row) != width:
        fail(f"expected {width} fields, got {len(row)}")
      if min_rating > 0:
        try:
          ratings.append(float(row[ri]))
        except ValueError:
          fail(f"bad rating {row[ri]!r}")
      chunk.append(row)
      count += 1
      if len(chunk) == _CHECK_ROWS:
        check_chunk()
        chunk = []
    check_chunk()
  if not count:
    raise DataError(f"{path}: no data rows (only the header); add one "
                    "puzzle per row or point the source elsewhere")
  keep = (np.flatnonzero(np.asarray(ratings) >= min_rating) if min_rating > 0
          else np.arange(count))
  if 0 < size < keep.size:
    picked = seeding.rng(seed, "subsample", tag).choice(keep.size, size,
                                                       replace=False)
    keep = keep[np.sort(picked)]
  wanted = np.zeros(count, bool)
  wanted[keep] = True
  with qa_csv.open_csv(path, "puzzle") as (reader, _, _, _):
    chosen = [row for row, w in zip(reader, wanted) if w]
  return _check_rows(path, n, chosen, qi, ai, keep)


def _generate_one(job):
  """Worker: (n, num_blanks, seed words) -> (puzzle, solution, rating)|None."""
  n, num_blanks, words = job
  return sudoku_solver.make_puzzle(sudoku_solver.geometry_for(n), words,
                                   num_blanks)


def generate(n: int, count: int, seed: int, tag: str, num_blanks: int = 0,
             min_rating: int = 0, num_workers: int = 1, progress=None):
  """`count` unique-solution puzzles; candidate k is seeded by (seed, tag, k).

  Returns (puzzles [count,n,n], solutions, ratings), identical for any
  `num_workers`.
  """
  max_candidates = 100 * count + 1000
  jobs = ((n, num_blanks, seeding.seed_words(seed, "sudoku", tag, k))
          for k in range(max_candidates))
  out = []
  if count > 0:
    for result in parallel.ordered_map(_generate_one, jobs, num_workers):
      if result is not None and result[2] >= min_rating:
        out.append(result)
        if progress and len(out) % 1000 == 0:
          progress(f"sudoku {tag}: {len(out)}/{count} puzzles")
        if len(out) == count:
          break
  if len(out) < count:
    raise DataError(f"only {len(out)} of {count} {n}x{n} puzzles met "
                    f"rating >= {min_rating} with {num_blanks or 'minimal'} "
                    f"blanks in {max_candidates} tries; lower min_rating or "
                    "num_blanks")
  if not out:
    z = np.zeros((0, n, n), np.int8)
    return z, z.copy(), np.zeros(0, np.int64)
  q, a, r = zip(*out)
  return np.stack(q), np.stack(a), np.array(r, np.int64)


def _augmented_group(q: np.ndarray, a: np.ndarray, num_aug: int,
                     rng: np.random.Generator) -> puzzles.Group:
  qs, as_ = [q], [a]
  for _ in range(num_aug):
    tf = random_transform(q.shape[0], rng)
    qs.append(apply_transform(q, tf))
    as_.append(apply_transform(a, tf))
  k = len(qs)
  return puzzles.Group(np.stack([encode(x) for x in qs]),
                       np.stack([encode(x) for x in as_]),
                       np.zeros(k, np.int32), np.ones(k, np.int32))


def plan(cfg, progress=print) -> puzzles.DatasetPlan:
  """Reads or generates the raw puzzles; groups are augmented lazily."""
  source = cfg.source
  n = cfg.board_size
  from_csv = source.startswith(("csv:", "hf:"))
  # -1 = the source's default (see config.py).
  test_size = cfg.test_size if cfg.test_size >= 0 else (0 if from_csv else
                                                        DEFAULT_TEST_SIZE)
  min_rating = cfg.min_rating if cfg.min_rating >= 0 else (
      DEFAULT_HARD_RATING if not from_csv and n == 9 and not cfg.num_blanks
      else 0)
  if from_csv:
    if n != 9:
      raise DataError(f"CSV Sudoku sources are 9x9; board_size is {n}")
    paths = qa_csv.split_paths(source)
    progress(f"reading {paths['train']}")
    train = _read_csv(paths["train"], n, cfg.train_size, min_rating,
                      cfg.seed, "train")
    progress(f"reading {paths['test']}")
    # min_rating filters the test split too, as the reference's
    # --min-difficulty does (its subsample applies to train only).
    test = _read_csv(paths["test"], n, test_size, min_rating, cfg.seed,
                     "test")
  elif source == "generate":
    gen = functools.partial(generate, n, seed=cfg.seed,
                            num_blanks=cfg.num_blanks,
                            min_rating=min_rating,
                            num_workers=cfg.num_workers or
                            parallel.default_workers(), progress=progress)
    progress(f"generating {cfg.train_size}+{test_size} {n}x{n} Sudoku "
             f"(rating >= {min_rating})")
    train = gen(cfg.train_size, tag="train")[:2]
    test = gen(test_size, tag="test")[:2]
  else:
    raise DataError(f"unknown Sudoku source {source!r}; use 'generate', "
                    "'csv:<dir>', 'hf:<repo>' or 'npy:<dir>'")

  def make_groups(split: str) -> Iterator[puzzles.Group]:
    if split == "test":
      yield from puzzles.single_example_groups(
          np.stack([encode(x) for x in test[0]]) if len(test[0]) else
          np.zeros((0, n * n), np.uint8),
          np.stack([encode(x) for x in test[1]]) if len(test[1]) else
          np.zeros((0, n * n), np.uint8))
      return
    for i, (q, a) in enumerate(zip(*train)):
      yield _augmented_group(q, a, cfg.num_aug,
                             seeding.rng(cfg.seed, "sudoku-aug", i))

  return puzzles.DatasetPlan(
      vocab_size=vocab_size(n), seq_len=n * n, ignore_label_id=0,
      identifiers=[puzzles.BLANK_IDENTIFIER],
      num_groups={"train": len(train[0]), "test": len(test[0])},
      make_groups=make_groups)


# --------------------------------------------------------- family interface
# (what `hrm_jax.data.families` promises every family provides)

NAME = "sudoku"


def configure(c) -> None:
  """Adds the Sudoku fields and their paper-scale defaults to a data config."""
  # "generate" (offline), or "csv:<dir>" / "hf:sapientinc/sudoku-extreme"
  # for the paper's Sudoku-Extreme data.
  c.source = "generate"
  c.board_size = 9  # 9 (3x3 boxes), 6 (2x3 boxes) or 4 (2x2 boxes).
  # Original train puzzles: the paper's 1k subset (CSV: 0 = all rows).
  c.train_size = 1000
  # Test puzzles; -1 = source default (CSV: all of test.csv, ~423k as in
  # the paper; generate: 1000).
  c.test_size = -1
  # Augmented variants per train puzzle (paper: 1000 => 1,001,000 rows).
  c.num_aug = 1000
  # -1 = source default. CSV: keep rows with rating >= this (reference
  # --min-difficulty, off in the paper). generate: keep puzzles whose
  # fixed-solver backtrack rating is >= this; default 20 for minimal 9x9
  # boards (keeps ~40% of them; median rating 13), else 0.
  c.min_rating = -1
  # Generated boards: blanks per puzzle; 0 = remove clues until minimal.
  # The CPU config uses board_size=6, num_blanks=14.
  c.num_blanks = 0


def shape(cfg) -> puzzles.DatasetShape:
  """PAD, blank and one token per digit; one cell per token; one (blank) id."""
  n = int(cfg.board_size)
  return puzzles.DatasetShape(vocab_size=vocab_size(n), seq_len=n * n,
                              num_puzzle_identifiers=1)


def board_side(num_cells: int) -> int | None:
  """4, 6 or 9 for 16, 36 or 81 cells (the board sizes we encode), else None."""
  side = int(round(np.sqrt(num_cells)))
  return side if side * side == num_cells and side in (4, 6, 9) else None


def encodes(vocab: int, seq_len: int) -> bool:
  side = board_side(seq_len)
  return side is not None and vocab == vocab_size(side)


def describe(seq_len: int) -> str:
  side = int(round(np.sqrt(seq_len)))
  return f"{side}x{side} Sudoku ({seq_len} cells)"


def check_answer(inputs_S: np.ndarray, prediction_S: np.ndarray) -> str | None:
  """Why `prediction` (tokens) does not solve the board `inputs` (tokens);
  None when it is a valid completion that keeps every given."""
  board = decode(inputs_S)
  tokens = np.asarray(prediction_S).reshape(board.shape)
  # Token d+1 is digit d; anything below 2 (PAD, blank) is not an answer.
  digits = np.where(tokens >= 2, tokens.astype(np.int16) - 1, 0).astype(np.int8)
  if np.any(digits == 0) or np.any(digits > board.shape[0]):
    bad = (digits == 0) | (digits > board.shape[0])
    r, c = (int(v) for v in np.argwhere(bad)[0])
    return (f"{int(bad.sum())} cell(s) are not digits (first at row {r + 1}, "
            f"column {c + 1})")
  return solution_problem(board, digits)
