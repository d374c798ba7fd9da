"""`hrm_jax.visualize`: the pictures of a real (smoke) run are written, decode,
and are embedded in one self-contained HTML page; wrong cells are marked."""
import base64
import io
import os
import pathlib
import re

import matplotlib
matplotlib.use("Agg")
from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top
from matplotlib.figure import Figure
import numpy as np
from PIL import Image
import pytest

import env_util
from hrm_jax import pictures, visualize
from hrm_jax.data import arc as arc_data
from hrm_jax.data import maze as maze_data
from hrm_jax.data import sudoku as sudoku_data


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory):
  """A 4-step 7x7 maze smoke run (evals at steps 2 and 4)."""
  workdir = tmp_path_factory.mktemp("maze_run")
  env_util.train_smoke(workdir, tmp_path_factory.mktemp("data"), "maze.py:smoke")
  return workdir


def test_writes_decodable_pngs_and_self_contained_html(maze_run, tmp_path):
  result = visualize.visualize(str(maze_run), str(tmp_path), num_puzzles=2,
                               halt_max_steps=3, num_halting=32)
  names = sorted(os.path.basename(p) for p in result["pngs"])
  assert names == ["act_steps.png", "curves.png", "trajectory_0.png",
                   "trajectory_1.png"]
  files = {}
  for path in result["pngs"]:
    png = pathlib.Path(path).read_bytes()
    with Image.open(io.BytesIO(png)) as image:
      assert image.format == "PNG" and image.width > 100 and image.height > 100
    files[png] = path
  # Input + target + 3 segments: one row of 5 panels, wider than tall.
  with Image.open(tmp_path / "trajectory_0.png") as image:
    assert image.width > 2 * image.height
  page = pathlib.Path(result["html"]).read_text()
  assert result["html"] == str(tmp_path / "index.html")
  embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
  assert len(embedded) == 4
  assert {base64.b64decode(e) for e in embedded} == set(files)  # the same images
  assert "<img src='http" not in page and "<script" not in page
  steps = result["halting_steps"]
  assert len(steps) == 32 and steps.min() >= 1 and steps.max() <= 3


@pytest.mark.slow
def test_a_transformer_baseline_run_is_drawn(tmp_path):
  """The baseline has no H_cycles/L_cycles: its page says what it has."""
  workdir = tmp_path / "baseline"
  env_util.train_smoke(workdir, tmp_path / "data", "arc.py:baseline,smoke")
  result = visualize.visualize(str(workdir), str(tmp_path / "out"), num_puzzles=1,
                               num_halting=8)
  page = pathlib.Path(result["html"]).read_text()
  assert "model: transformer, hidden" in page and "H_cycles" not in page


def test_cli_error_is_one_line(tmp_path):
  proc = env_util.run_module("hrm_jax.visualize", f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert "no checkpoints/ directory" in proc.stderr and "Traceback" not in proc.stderr


def _axes():
  return Figure().subplots()


def _red_outlines(ax):
  red = mcolors.to_rgba(pictures.WRONG)
  return sum(1 for p in ax.patches if p.get_edgecolor() == red)


def test_sudoku_wrong_digit_is_red():
  puzzle, answer, (wrong, _) = _sudoku_trajectory()
  ax = _axes()
  assert pictures.render_grid(ax, "sudoku", wrong, inputs=puzzle, target=answer) == 1
  assert _red_outlines(ax) == 1
  red_texts = [t.get_text() for t in ax.texts
               if t.get_color() == pictures.WRONG]
  assert red_texts == ["1"]
  ax = _axes()
  assert pictures.render_grid(ax, "sudoku", answer, inputs=puzzle, target=answer) == 0
  assert _red_outlines(ax) == 0


def test_maze_path_errors_are_outlined():
  solved = "#####" "#Soo#" "###o#" "#Goo#" "#####"
  partial = "#####" "#Soo#" "### #" "#Goo#" "#####"
  ax = _axes()
  assert pictures.render_grid(ax, "maze", maze_data.encode(partial),
                               target=maze_data.encode(solved)) == 1
  assert _red_outlines(ax) == 1


def test_arc_crops_at_eos_and_marks_shape_errors():
  target = np.array([[1, 2], [3, 4]])
  guess = np.array([[1, 2, 5], [3, 0, 5]])  # 1 wrong cell + 2 outside the target
  ax = _axes()
  wrong = pictures.render_grid(ax, "arc", arc_data.encode_grid(guess),
                                target=arc_data.encode_grid(target))
  assert wrong == 3
  assert _red_outlines(ax) == 3
  image = ax.images[0].get_array()
  assert image.shape == (2, 3)  # cropped at the EOS border, not 30x30
  assert "target 2x2" in ax.get_xlabel()


def _sudoku_trajectory():
  """A 4x4 board, its answer, and two segments: wrong, then right."""
  puzzle = np.array([[3, 1, 0, 2], [4, 2, 3, 1], [2, 4, 1, 3], [1, 3, 2, 4]])
  answer = puzzle.copy()
  answer[0, 2] = 4
  wrong = answer.copy()
  wrong[0, 2] = 1
  trajectory = np.stack([sudoku_data.encode(wrong), sudoku_data.encode(answer)])
  return sudoku_data.encode(puzzle), sudoku_data.encode(answer), trajectory


def _frame_colour(ax):
  colours = {mcolors.to_hex(s.get_edgecolor()) for s in ax.spines.values()}
  widths = {s.get_linewidth() for s in ax.spines.values()}
  return colours.pop() if len(colours) == 1 and widths == {3} else None


def test_halting_frame_is_green_only_on_a_right_answer():
  """Issue 12: the final segment was framed green even when wrong. Now the
  frame marks where the Q head halts, green if right and red if wrong, and
  the key is in the figure itself."""
  inputs, target, trajectory = _sudoku_trajectory()
  fig = visualize.trajectory_figure("sudoku", inputs, target, trajectory, halt_segment=1)
  seg1, seg2 = fig.axes[2], fig.axes[3]
  assert _frame_colour(seg1) == pictures.WRONG  # halts on a wrong answer: red
  assert _frame_colour(seg2) is None
  assert "1 wrong" in seg1.get_title() and "Q head halts here" in seg1.get_title()
  assert mcolors.to_hex(seg1.title.get_color()) == pictures.WRONG
  assert "correct" in seg2.get_title()
  assert mcolors.to_hex(seg2.title.get_color()) == pictures.CORRECT
  [legend] = fig.legends
  labels = [t.get_text() for t in legend.get_texts()]
  assert "Q head halts here: answer correct" in labels
  assert "Q head halts here: answer wrong" in labels and "wrong cell" in labels
  assert any(pictures.LEGENDS["sudoku"] == t.get_text() for t in fig.texts)

  fig = visualize.trajectory_figure("sudoku", inputs, target, trajectory, halt_segment=2)
  assert _frame_colour(fig.axes[2]) is None
  assert _frame_colour(fig.axes[3]) == pictures.HALT

  # No halt before the limit: no frame at all, and the last title says so.
  fig = visualize.trajectory_figure("sudoku", inputs, target, trajectory[::-1],
                                    halt_segment=None)
  assert _frame_colour(fig.axes[2]) is None and _frame_colour(fig.axes[3]) is None
  assert "limit" in fig.axes[3].get_title()


def test_log_axis_ticks_are_plain_numbers():
  """Issue 12: loss ticks read like 2.1x10^0."""
  records = [{"step": s, "train/loss": 2.5 - 0.1 * s, "eval/loss": 2.4 - 0.1 * s}
             for s in range(1, 10)]
  fig = visualize.curves_figure(records)
  fig.canvas.draw()
  loss_ax = fig.axes[0]
  assert loss_ax.get_yscale() == "log"
  labels = [t.get_text() for t in loss_ax.get_yticklabels(which="both") if t.get_text()]
  assert len(labels) >= 3, labels
  for text in labels:
    assert "10^" not in text and "times" not in text, labels
    float(text.replace("\N{MINUS SIGN}", "-"))  # a plain number
