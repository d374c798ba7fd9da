"""Maze: charset encoding, generator guarantees, dihedral augmentation, CSV."""

import numpy as np
import pytest

from hrm_jax import data
from hrm_jax.data import dihedral
from hrm_jax.data import maze


def test_encode_decode_round_trip_and_reference_ids():
  text = "# SGo" * 3
  tokens = maze.encode(text)
  assert tokens[:5].tolist() == [1, 2, 3, 4, 5]  # "# SGo" -> 1..5, PAD 0.
  assert maze.decode(tokens) == text
  assert maze.VOCAB_SIZE == 6
  with pytest.raises(data.DataError, match="unknown character 'x'"):
    maze.encode("# x")


def _check_label(inp, label, min_len):
  """The label marks exactly one shortest path of > min_len moves."""
  side = int(np.sqrt(inp.size))
  inp, label = inp.reshape(side, side), label.reshape(side, side)
  expect, length, count = maze.shortest_path_label(inp)
  np.testing.assert_array_equal(label, expect)
  assert length > min_len and count == 1
  assert (label == maze.PATH).sum() == length - 1
  # Path cells were open in the input; everything else is unchanged.
  assert np.all(inp[label == maze.PATH] == maze.OPEN)
  assert np.all(inp[label != maze.PATH] == label[label != maze.PATH])
  dist, _ = maze.bfs(inp, tuple(np.argwhere(inp == maze.START)[0]))
  on_path = np.argwhere(label == maze.PATH)
  assert sorted(dist[tuple(on_path.T)].tolist()) == list(range(1, length))


@pytest.mark.parametrize("size, min_len",
                         [(7, 8), (9, 12), (11, 18), (30, 110)])
def test_generator_paths_are_long_and_unique(size, min_len):
  count = 2 if size == 30 else 5
  inputs, labels, lengths = maze.generate(size, count, min_len, 0.05, 0, "t")
  assert inputs.shape == (count, size * size)
  assert np.all(lengths > min_len)
  for x, y in zip(inputs, labels):
    assert set(np.unique(x)) <= {1, 2, 3, 4}
    _check_label(x, y, min_len)


def test_generator_is_deterministic_by_seed():
  a = maze.generate(9, 3, 12, 0.05, 4, "train")
  b = maze.generate(9, 3, 12, 0.05, 4, "train")
  c = maze.generate(9, 3, 12, 0.05, 5, "train")
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])


def test_dihedral_augmentation_keeps_shortest_paths():
  inputs, labels, _ = maze.generate(11, 2, 18, 0.05, 1, "t")
  for x, y in zip(inputs, labels):
    for t in range(dihedral.NUM_TRANSFORMS):
      tx = dihedral.transform(x.reshape(11, 11), t).reshape(-1)
      ty = dihedral.transform(y.reshape(11, 11), t).reshape(-1)
      _check_label(tx, ty, 18)
      np.testing.assert_array_equal(
          dihedral.inverse(tx.reshape(11, 11), t).reshape(-1), x)


def _write(path, rows):
  path.write_text("source,q,a,rating\n" +
                  "".join(f"gen,{q},{a},0\n" for q, a in rows))


def test_csv_round_trip_and_errors(tmp_path):
  inputs, labels, _ = maze.generate(7, 3, 8, 0.0, 0, "t")
  rows = [(maze.decode(x), maze.decode(y)) for x, y in zip(inputs, labels)]
  _write(tmp_path / "train.csv", rows)
  x, y = maze.read_csv(str(tmp_path / "train.csv"), 7)
  np.testing.assert_array_equal(x, inputs)
  np.testing.assert_array_equal(y, labels)
  sub, _ = maze.read_csv(str(tmp_path / "train.csv"), 7, limit=2, seed=1)
  assert len(sub) == 2
  bad = [(rows[0][0][:-1], rows[0][1])]
  _write(tmp_path / "short.csv", bad)
  with pytest.raises(data.DataError, match=r"short.csv row 2: expected 49"):
    maze.read_csv(str(tmp_path / "short.csv"), 7)
  bad = [(rows[0][0], rows[0][1][:-1] + "G")]
  _write(tmp_path / "label.csv", bad)
  with pytest.raises(data.DataError, match="label.csv row 2: label differs"):
    maze.read_csv(str(tmp_path / "label.csv"), 7)
  bad = [(rows[0][0].replace(" ", "?", 1), rows[0][1])]
  _write(tmp_path / "char.csv", bad)
  with pytest.raises(data.DataError, match=r"char.csv row 2: unknown charac"):
    maze.read_csv(str(tmp_path / "char.csv"), 7)


# ---- The rule check (test-time selection "checker", `solve`): the task's answers only.


def _grid(text: str) -> np.ndarray:
  return maze.encode(text).reshape(5, 5)


# Two routes from S to G round the centre wall: 2 moves down the left, 6 round the right.
_LOOP = "#####" "#S  #" "# # #" "#G  #" "#####"


def test_checker_rejects_a_longer_path():
  longer = "#####" "#Soo#" "# #o#" "#Goo#" "#####"  # connects S to G in 6 moves
  problem = maze.check_answer(maze.encode(_LOOP), maze.encode(longer))
  assert problem is not None and "6 moves, not a shortest path (2 moves)" in problem


def test_checker_rejects_an_over_marked_grid():
  every_open_cell = "#####" "#Soo#" "#o#o#" "#Goo#" "#####"  # holds the shortest path
  problem = maze.check_answer(maze.encode(_LOOP), maze.encode(every_open_cell))
  assert problem is not None and "5 'o' cell(s) beyond a shortest path" in problem
  shortest = "#####" "#S  #" "#o# #" "#G  #" "#####"
  one_extra = "#####" "#S o#" "#o# #" "#G  #" "#####"
  assert maze.check_answer(maze.encode(_LOOP), maze.encode(shortest)) is None
  assert "1 'o' cell(s) beyond" in maze.check_answer(maze.encode(_LOOP),
                                                       maze.encode(one_extra))


def test_checker_accepts_the_shortest_path_of_generated_mazes_only():
  inputs, labels, lengths = maze.generate(11, 4, 18, 0.05, seed=3, tag="check")
  for x, y, length in zip(inputs, labels, lengths):
    assert maze.check_answer(x, y) is None
    # Every open cell marked: S still reaches G by a shortest route, but the marking
    # is not a path (the generator's mazes have corridors off the path).
    flooded = np.where(x == maze.OPEN, maze.PATH, x).astype(np.uint8)
    extra = int(np.sum(flooded == maze.PATH)) - (length - 1)
    assert extra > 0
    assert f"{extra} 'o' cell(s) beyond a shortest path" in maze.check_answer(x, flooded)
