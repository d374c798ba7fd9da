"""How a puzzle is drawn, and the self-contained HTML page the pictures go on.

Shared by `visualize` (a run's reasoning trajectories and curves) and
`analyze` (the paper's analyses). Rendering per family: Sudoku = digits with
box lines (givens black, model digits blue); Maze = cells coloured by token
(wall, open, S, G, path); ARC = the 10 ARC colours, cropped at the EOS border
like the ARC evaluator does. Matplotlib runs on the Agg backend through Figure
objects (no pyplot state), so this works headless and inside tests.
"""
# pylint: disable=invalid-name
from __future__ import annotations

import base64
import html
import io
from typing import Sequence

from etils import epath
import matplotlib
matplotlib.use("Agg")
from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top
from matplotlib import patches
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from hrm_jax.data import arc as arc_data
from hrm_jax.data import sudoku_solver

WRONG = "#e41a1c"  # outline / text of a wrong cell
GIVEN = "#111111"
PREDICTED = "#1f5fbf"
HALT = "#2ca02c"  # frame of the segment where the Q head halts on a right answer
CORRECT = HALT  # title of a segment whose answer is exact
# Maze tokens: PAD, wall '#', open ' ', start 'S', goal 'G', path 'o'.
MAZE_COLOURS = ["#ff00ff", "#2b2b2b", "#ffffff", "#2ca02c", "#ff7f0e", "#1f77b4"]
# The ARC palette (colours 0..9) as in the ARC testing interface.
ARC_COLOURS = ["#000000", "#0074d9", "#ff4136", "#2ecc40", "#ffdc00", "#aaaaaa",
               "#f012be", "#ff851b", "#7fdbff", "#870c25"]
LEGENDS = {
    "sudoku": "Givens bold black, the model's digits blue, wrong digits red.",
    "maze": "Wall dark grey, open white, S green, G orange, path blue.",
    "arc": "ARC colours 0-9; grids cropped at the EOS border.",
}

# --------------------------------------------------------------- one grid


def _outline(ax, r: int, c: int, colour: str = WRONG, width: float = 2.0) -> None:
  ax.add_patch(patches.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False,
                                 edgecolor=colour, linewidth=width))


def _bare(ax, side_r: int, side_c: int) -> None:
  ax.set_xlim(-0.5, side_c - 0.5)
  ax.set_ylim(side_r - 0.5, -0.5)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])


def _draw_sudoku(ax, tokens: np.ndarray, inputs: np.ndarray | None,
                 wrong: np.ndarray) -> None:
  """Digits in a grid; token d+1 is digit d, 1 blank, 0 PAD (shown '?')."""
  n = int(round(np.sqrt(tokens.size)))
  grid, given = tokens.reshape(n, n), None
  if inputs is not None:
    given = inputs.reshape(n, n) >= 2
  _bare(ax, n, n)
  geo = sudoku_solver.geometry_for(n)
  for i in range(n + 1):
    ax.axhline(i - 0.5, color="#333333", lw=2.0 if i % geo.box_rows == 0 else 0.5)
    ax.axvline(i - 0.5, color="#333333", lw=2.0 if i % geo.box_cols == 0 else 0.5)
  size = 7 + 40 / n
  for r in range(n):
    for c in range(n):
      t = int(grid[r, c])
      text = "?" if t == 0 else ("" if t == 1 else str(t - 1))
      is_given = given is not None and given[r, c]
      colour = WRONG if wrong[r, c] else (GIVEN if is_given else PREDICTED)
      ax.text(c, r, text, ha="center", va="center", fontsize=size, color=colour,
              fontweight="bold" if is_given else "normal")
      if wrong[r, c]:
        _outline(ax, r, c)


def _draw_maze(ax, tokens: np.ndarray, wrong: np.ndarray) -> None:
  n = int(round(np.sqrt(tokens.size)))
  cmap = mcolors.ListedColormap(MAZE_COLOURS)
  ax.imshow(np.clip(tokens.reshape(n, n), 0, len(MAZE_COLOURS) - 1), cmap=cmap,
            vmin=-0.5, vmax=len(MAZE_COLOURS) - 0.5, interpolation="nearest")
  _bare(ax, n, n)
  width = max(0.8, 2.5 - n / 15)
  for r, c in np.argwhere(wrong):
    _outline(ax, r, c, width=width)


def _draw_arc(ax, grid: np.ndarray, target: np.ndarray | None) -> int:
  """A cropped colour grid; cells that differ from `target` (or lie outside
  it) are outlined white-on-red so they show on every ARC colour. Returns
  the number of wrong cells."""
  if grid.size == 0:
    _bare(ax, 1, 1)
    ax.text(0, 0, "empty\n(no EOS border)", ha="center", va="center", fontsize=8,
            color=WRONG)
    return 0
  ax.imshow(grid, cmap=mcolors.ListedColormap(ARC_COLOURS), vmin=-0.5, vmax=9.5,
            interpolation="nearest")
  h, w = grid.shape
  _bare(ax, h, w)
  ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
  ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
  ax.grid(which="minor", color="#555555", linewidth=0.3)
  ax.tick_params(which="minor", length=0)
  if target is None:
    return 0
  wrong = np.ones((h, w), bool)
  th, tw = min(h, target.shape[0]), min(w, target.shape[1])
  wrong[:th, :tw] = grid[:th, :tw] != target[:th, :tw]
  width = max(0.4, 1.4 - max(h, w) / 20)  # thin lines on big grids
  for r, c in np.argwhere(wrong):
    _outline(ax, r, c, colour="white", width=2 * width)
    _outline(ax, r, c, width=width)
  if (h, w) != target.shape:
    ax.set_xlabel(f"{h}x{w}, target {target.shape[0]}x{target.shape[1]}",
                  fontsize=7, color=WRONG)
  return int(wrong.sum())


def _render_arc(ax, tokens, inputs, target) -> int:
  del inputs
  return _draw_arc(ax, arc_data.crop(tokens), None if target is None else arc_data.crop(target))


def _cell_renderer(draw):
  """A renderer for square token grids: cells differing from `target` are wrong."""
  def render(ax, tokens, inputs, target) -> int:
    wrong = (np.zeros(tokens.shape, bool) if target is None
             else tokens != np.asarray(target).reshape(-1))
    n = int(round(np.sqrt(tokens.size)))
    draw(ax, tokens, inputs, wrong.reshape(n, n))
    return int(wrong.sum())
  return render


# How each puzzle family is drawn: (ax, tokens, inputs, target) -> wrong cells.
RENDERERS = {
    "sudoku": _cell_renderer(_draw_sudoku),
    "maze": _cell_renderer(lambda ax, tokens, inputs, wrong: _draw_maze(ax, tokens, wrong)),
    "arc": _render_arc,
}


def render_grid(ax, family: str, tokens: np.ndarray, *, inputs: np.ndarray | None = None,
                target: np.ndarray | None = None) -> int:
  """Draws one encoded grid on `ax`; returns how many cells are wrong.

  Args:
    ax: a matplotlib Axes.
    family: "sudoku", "maze" or "arc".
    tokens: the encoded grid [S] (input, label or prediction).
    inputs: the puzzle's input tokens (Sudoku: givens are drawn bold black).
    target: label tokens; cells that differ are marked wrong. None: nothing
      is marked (for the input and target panels themselves).
  """
  if family not in RENDERERS:
    raise ValueError(f"no pictures for puzzle family {family!r}; known: {sorted(RENDERERS)}")
  return RENDERERS[family](ax, np.asarray(tokens).reshape(-1), inputs, target)


# ------------------------------------------------------------------- output


class PlainLogFormatter(ticker.LogFormatter):
  """Log-axis tick labels as plain numbers (0.02, 1.5, 10) where matplotlib's
  default writes 2x10^-2 and 1.5x10^0; the ticks labelled are the same."""

  def __call__(self, x, pos=None):
    return f"{x:g}" if super().__call__(x, pos) else ""


def plain_log_axis(axis) -> None:
  """Puts `PlainLogFormatter` on a log-scaled matplotlib Axis (e.g. ax.yaxis)."""
  axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
  axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False,
                                             minor_thresholds=(2, 0.5)))


def trajectory_legend(fig: Figure, family: str) -> None:
  """The key of a trajectory figure, in the figure itself (a PNG is often seen
  without the page around it)."""
  handles = [
      patches.Patch(facecolor="none", edgecolor=HALT, linewidth=3,
                    label="Q head halts here: answer correct"),
      patches.Patch(facecolor="none", edgecolor=WRONG, linewidth=3,
                    label="Q head halts here: answer wrong"),
      patches.Patch(facecolor="none", edgecolor=WRONG, linewidth=1.5,
                    label="wrong cell"),
  ]
  inch = 1.0 / fig.get_figheight()  # the key's rows sit at fixed heights
  fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False,
             bbox_to_anchor=(0.5, 0.02 * inch))
  fig.text(0.5, 0.34 * inch, LEGENDS.get(family, ""), ha="center", va="bottom",
           fontsize=7, color="#444444")


# Space to keep free under a figure's panels for `trajectory_legend`, in inches.
LEGEND_INCHES = 0.6


def new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig

def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return buf.getvalue()


def write_html(path: epath.Path, title: str, summary: Sequence[str],
               sections: Sequence[tuple[str, bytes, str]]) -> None:
  """One page; each section = (heading, PNG bytes, caption), images inline."""
  parts = [
      "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
      f"<title>{html.escape(title)}</title>",
      "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;"
      "color:#222}img{max-width:100%;border:1px solid #ddd}"
      "figcaption{color:#555;font-size:90%;margin:.3em 0 2em}</style>",
      "</head><body>", f"<h1>{html.escape(title)}</h1>", "<ul>",
      *[f"<li>{html.escape(s)}</li>" for s in summary], "</ul>"]
  for heading, png, caption in sections:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    parts += [f"<h2>{html.escape(heading)}</h2>", "<figure>",
              f"<img src='{uri}' alt='{html.escape(heading)}'>",
              f"<figcaption>{html.escape(caption)}</figcaption>", "</figure>"]
  parts.append("</body></html>")
  path.write_text("\n".join(parts))
