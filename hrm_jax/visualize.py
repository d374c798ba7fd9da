"""Pictures of a training run: reasoning trajectories, curves, ACT halting.

    python -m hrm_jax.visualize --workdir=DIR [--num_puzzles=4] [--split=test]

writes into DIR/visualize/ (or --out):

* trajectory_<i>.png: for a few held-out puzzles, the input, the target and
  the model's answer after every ACT segment (the paper's "reasoning
  trajectory": Sudoku cells changing, the maze path emerging, the ARC grid
  refining), wrong cells outlined in red. The segment where the Q head would
  halt (adaptive halting) is framed in green.
* curves.png: train loss, train/eval accuracy and eval exact accuracy against
  the step, from DIR/metrics.jsonl.
* act_steps.png: how many segments each puzzle uses under adaptive halting,
  with exact accuracy adaptive vs always running all segments.
* index.html: all of the above in one self-contained page (images embedded
  as base64 data URIs), so it can be mailed or opened from a bucket.

Rendering per family: Sudoku = digits with box lines (givens black, model
digits blue); Maze = cells coloured by token (wall, open, S, G, path); ARC =
the 10 ARC colours, cropped at the EOS border like the ARC evaluator does.
Matplotlib runs on the Agg backend through Figure objects (no pyplot state),
so this works headless and inside tests.
"""
# pylint: disable=invalid-name
from __future__ import annotations

import base64
import html
import io
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
import matplotlib
matplotlib.use("Agg")
from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top
from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from hrm_jax import inference, metric_writers
from hrm_jax import data
from hrm_jax.data import arc as arc_data
from hrm_jax.data import sudoku_solver

WRONG = "#e41a1c"  # outline / text of a wrong cell
GIVEN = "#111111"
PREDICTED = "#1f5fbf"
HALT = "#2ca02c"  # frame of the segment where the Q head halts
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
PANEL_INCHES = 2.1
MAX_COLUMNS = 6


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


def render_grid(ax, kind: str, tokens: np.ndarray, *, inputs: np.ndarray | None = None,
                target: np.ndarray | None = None) -> int:
  """Draws one encoded grid on `ax`; returns how many cells are wrong.

  Args:
    ax: a matplotlib Axes.
    kind: "sudoku", "maze" or "arc".
    tokens: the encoded grid [S] (input, label or prediction).
    inputs: the puzzle's input tokens (Sudoku: givens are drawn bold black).
    target: label tokens; cells that differ are marked wrong. None: nothing
      is marked (for the input and target panels themselves).
  """
  tokens = np.asarray(tokens).reshape(-1)
  if kind == "arc":
    return _draw_arc(ax, arc_data.crop(tokens),
                     None if target is None else arc_data.crop(target))
  wrong = (np.zeros(tokens.shape, bool) if target is None
           else tokens != np.asarray(target).reshape(-1))
  n = int(round(np.sqrt(tokens.size)))
  if kind == "sudoku":
    _draw_sudoku(ax, tokens, inputs, wrong.reshape(n, n))
  elif kind == "maze":
    _draw_maze(ax, tokens, wrong.reshape(n, n))
  else:
    raise ValueError(f"unknown puzzle kind {kind!r}; use one of {inference.KINDS}")
  return int(wrong.sum())


# ------------------------------------------------------------------ figures


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def trajectory_figure(kind: str, inputs: np.ndarray, target: np.ndarray,
                      trajectory_MxS: np.ndarray, *, halt_segment: int | None = None,
                      title: str = "") -> Figure:
  """Input, target, then the prediction after each segment, in rows.

  Args:
    kind: puzzle family.
    inputs, target: [S] tokens.
    trajectory_MxS: argmax prediction after segments 1..M.
    halt_segment: 1-based segment where the Q head halts (framed green).
    title: figure title.
  """
  M = trajectory_MxS.shape[0]
  panels = 2 + M
  cols = min(panels, MAX_COLUMNS)
  rows = -(-panels // cols)
  fig = _new_figure(cols * PANEL_INCHES, rows * (PANEL_INCHES + 0.35) + 0.6)
  axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
  render_grid(axes[0], kind, inputs, inputs=inputs)
  axes[0].set_title("input", fontsize=9)
  render_grid(axes[1], kind, target, inputs=inputs)
  axes[1].set_title("target", fontsize=9)
  for m in range(M):
    ax = axes[2 + m]
    wrong = render_grid(ax, kind, trajectory_MxS[m], inputs=inputs, target=target)
    label = f"segment {m + 1}: " + ("correct" if not wrong and
                                    _exact(kind, trajectory_MxS[m], target)
                                    else f"{wrong} wrong")
    if halt_segment == m + 1:
      label += "\nQ head halts here" if m + 1 < M else "\nstops at the limit"
      for spine in ax.spines.values():
        spine.set_edgecolor(HALT)
        spine.set_linewidth(3)
    ax.set_title(label, fontsize=8, color=HALT if halt_segment == m + 1 else "black")
  for ax in axes[panels:]:
    ax.set_visible(False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def _exact(kind: str, prediction: np.ndarray, target: np.ndarray) -> bool:
  if kind == "arc":
    p, t = arc_data.crop(prediction), arc_data.crop(target)
    return p.shape == t.shape and bool(np.all(p == t))
  return bool(np.all(np.asarray(prediction) == np.asarray(target)))


def curves_figure(records: Sequence[dict[str, Any]]) -> Figure:
  """Loss, accuracy and eval exact accuracy against the step."""
  fig = _new_figure(13, 3.6)
  axes = fig.subplots(1, 3)
  panels = [
      ("loss", [("train/loss", "train"), ("eval/loss", "eval")], "log"),
      ("token accuracy", [("train/accuracy", "train"), ("eval/accuracy", "eval"),
                          ("train/exact_accuracy", "train exact")], "linear"),
      ("eval exact accuracy (paper metric)", [("eval/exact_accuracy", "eval exact")],
       "linear"),
  ]
  for ax, (title, series, scale) in zip(axes, panels):
    drawn = False
    for key, label in series:
      points = [(r["step"], r[key]) for r in records
                if key in r and np.isfinite(r[key])]
      if points:
        x, y = zip(*points)
        ax.plot(x, y, marker="o" if len(points) < 30 else None, markersize=3,
                label=label)
        drawn = True
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    if drawn:
      if scale == "log" and all(r.get(k, 1) > 0 for r in records for k, _ in series):
        ax.set_yscale("log")
      else:  # accuracies: always the full range, so one point is not a cliff
        ax.set_ylim(-0.02, 1.02)
      ax.legend(fontsize=8)
      ax.grid(alpha=0.3)
    else:
      ax.text(0.5, 0.5, "no records yet", ha="center", va="center",
              transform=ax.transAxes, color="#888888")
  fig.tight_layout()
  return fig


def halting_figure(steps_N: np.ndarray, M: int, exact_adaptive: float,
                   exact_full: float) -> Figure:
  """Histogram of segments used under adaptive halting."""
  fig = _new_figure(6.5, 3.6)
  ax = fig.subplots()
  counts = np.bincount(np.asarray(steps_N, np.int64), minlength=M + 1)[1:M + 1]
  ax.bar(np.arange(1, M + 1), counts, color="#4c72b0")
  ax.set_xticks(np.arange(1, M + 1))
  ax.set_xlabel("ACT segments used (Q head: halt when q_halt > q_continue)")
  ax.set_ylabel("puzzles")
  ax.set_title(f"Adaptive halting on {len(steps_N)} puzzles: mean "
               f"{np.mean(steps_N):.2f} of {M} segments\nexact accuracy "
               f"{exact_adaptive:.1%} adaptive vs {exact_full:.1%} with all {M}",
               fontsize=10)
  fig.tight_layout()
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


# --------------------------------------------------------------------- run


def _shown_examples(split: data.PuzzleSplit, kind: str, count: int) -> np.ndarray:
  """Evenly spread example indices; for ARC only non-augmented puzzles, so
  the pictures show tasks as humans see them."""
  candidates = np.arange(split.num_examples)
  if kind == "arc":
    pids = split.example_puzzle_identifiers()
    original = np.array([arc_data.parse_name(n)[0] == n for n in split.identifiers])
    original[0] = False  # the blank id
    candidates = candidates[original[pids]] if original[pids].any() else candidates
  if len(candidates) == 0:
    raise inference.InferenceError("The split has no examples to show.")
  picks = np.linspace(0, len(candidates) - 1, min(count, len(candidates)))
  return candidates[np.unique(np.round(picks).astype(np.int64))]


def _labels(split: data.PuzzleSplit, index: np.ndarray) -> np.ndarray:
  """Labels with the dataset's ignore id turned into -100 (loss convention)."""
  labels = split.labels[index].astype(np.int32)
  ignore = split.metadata.ignore_label_id
  if ignore is not None:
    labels[labels == ignore] = data.IGNORE_LABEL_ID
  return labels


def _run_examples(loaded: inference.Loaded, split: data.PuzzleSplit,
                  index: np.ndarray, M: int, batch_size: int) -> dict[str, np.ndarray]:
  """Full and adaptive runs of the examples `index`, in equal-shape batches
  (the last one padded) so that each mode compiles once.

  Returns per example: trajectory [M, N, S] (all M segments), steps,
  q_halt_confidence (adaptive run), exact_full and exact_adaptive (every
  supervised token right: the paper's exact accuracy).
  """
  pids = split.example_puzzle_identifiers()
  parts = {k: [] for k in ("trajectory", "steps", "q_halt_confidence", "exact_full",
                           "exact_adaptive")}
  for start in range(0, len(index), batch_size):
    rows = index[start:start + batch_size]
    pad = batch_size - len(rows)
    inputs = np.pad(split.inputs[rows], ((0, pad), (0, 0)),
                    constant_values=split.metadata.pad_id)
    labels = np.pad(_labels(split, rows), ((0, pad), (0, 0)),
                    constant_values=data.IGNORE_LABEL_ID)
    ids = np.pad(pids[rows], (0, pad))
    keep = slice(0, len(rows))
    for adaptive in (False, True):
      out = inference.predict(loaded, inputs, ids, halt_max_steps=M, adaptive=adaptive)
      exact = np.all((out["predictions"] == labels) | (labels == data.IGNORE_LABEL_ID),
                     axis=-1)
      if adaptive:
        parts["steps"].append(out["steps"][keep])
        parts["q_halt_confidence"].append(out["q_halt_confidence"][keep])
        parts["exact_adaptive"].append(exact[keep])
      else:
        parts["trajectory"].append(out["trajectory"][:, keep])
        parts["exact_full"].append(exact[keep])
  return {k: np.concatenate(v, axis=1 if k == "trajectory" else 0)
          for k, v in parts.items()}


def visualize(workdir: str, out_dir: str | None = None, num_puzzles: int = 4,
              split_name: str = "test", halt_max_steps: int | None = None,
              num_halting: int = 256, batch_size: int = 64) -> dict[str, Any]:
  """Renders everything; returns {"html": path, "pngs": [paths], ...}.

  Args:
    workdir: the training run.
    out_dir: where to write (default WORKDIR/visualize).
    num_puzzles: trajectories to draw.
    split_name: "test" (held out) or "train".
    halt_max_steps: segments to run (default: the model's).
    num_halting: examples for the halting histogram (first ones of the split).
    batch_size: rows per forward pass for the histogram.
  """
  loaded = inference.load_workdir(workdir)
  kind = loaded.kind
  split = data.load(loaded.run_config.data, split_name)
  M = halt_max_steps or loaded.config.halt_max_steps
  out = epath.Path(out_dir or epath.Path(workdir) / "visualize")
  out.mkdir(parents=True, exist_ok=True)
  for stale in out.glob("trajectory_*.png"):  # from an earlier, larger run
    stale.unlink()
  pids = split.example_puzzle_identifiers()
  written, sections = [], []

  def save(name: str, fig: Figure, heading: str, caption: str) -> None:
    png = png_bytes(fig)
    (out / name).write_bytes(png)
    written.append(os.fspath(out / name))
    sections.append((heading, png, caption))

  # Training curves.
  records = metric_writers.read_jsonl_metrics(workdir)
  save("curves.png", curves_figure(records), "Training curves",
       f"{len(records)} records from metrics.jsonl.")

  # One pass over the halting examples plus the shown ones, each batch run
  # with all M segments (the trajectories) and with Q-head halting.
  count = min(num_halting, split.num_examples)
  shown = _shown_examples(split, kind, num_puzzles)
  index = np.unique(np.concatenate([np.arange(count), shown]))
  runs = _run_examples(loaded, split, index, M, min(batch_size, len(index)))
  first = np.arange(count)  # positions of examples 0..count-1 in `index`
  save("act_steps.png", halting_figure(runs["steps"][first], M,
                                       runs["exact_adaptive"][first].mean(),
                                       runs["exact_full"][first].mean()),
       "ACT segments under adaptive halting",
       f"The first {count} {split_name} puzzles, run once with Q-head halting and "
       f"once with all {M} segments.")

  for i, e in enumerate(shown.tolist()):
    row = int(np.searchsorted(index, e))
    trajectory = runs["trajectory"][:, row]
    target = split.labels[e]
    solved = [m + 1 for m in range(M) if _exact(kind, trajectory[m], target)]
    halt = int(runs["steps"][row])
    name = split.identifiers[pids[e]] if kind == "arc" else f"example {e}"
    halting = (f"Q head halts at segment {halt}" if halt < M else
               f"Q head does not halt before the limit of {M} segments")
    title = (f"{split_name} {name}: " +
             (f"exact from segment {solved[0]}" if solved else "never exact") +
             f"; {halting} (sigmoid(q_halt) {runs['q_halt_confidence'][row]:.2f})")
    save(f"trajectory_{i}.png",
         trajectory_figure(kind, split.inputs[e], target, trajectory,
                           halt_segment=halt, title=title),
         f"Reasoning trajectory {i + 1}",
         f"{title}. {LEGENDS[kind]} Red outline: wrong cell; green frame: the "
         "segment where adaptive halting stops.")

  summary = [
      f"workdir: {workdir} (checkpoint step {loaded.step})",
      f"dataset: {kind}, seq_len {loaded.config.seq_len}, vocab "
      f"{loaded.config.vocab_size}; split '{split_name}' ({split.num_examples} "
      "examples)",
      f"model: H_cycles {loaded.config.H_cycles}, L_cycles {loaded.config.L_cycles}, "
      f"hidden {loaded.config.hidden_size}; segments shown: {M}",
  ]
  html_path = out / "index.html"
  write_html(html_path, f"HRM run {os.path.basename(os.fspath(workdir).rstrip('/'))}",
             summary, sections)
  return {"html": os.fspath(html_path), "pngs": written,
          "halting_steps": runs["steps"][first], "shown": shown}


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run directory.")
  flags.DEFINE_string("out", None, "Output directory (default WORKDIR/visualize).")
  flags.DEFINE_integer("num_puzzles", 4, "Trajectories to draw.")
  flags.DEFINE_enum("split", "test", ["test", "train"], "Split to draw puzzles from.")
  flags.DEFINE_integer("halt_max_steps", None, "Segments (default: the model's).")
  flags.DEFINE_integer("num_halting", 256, "Puzzles for the halting histogram.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not f.workdir:
    raise app.UsageError("--workdir is required.")
  if f.num_puzzles < 1 or f.num_halting < 1:
    raise app.UsageError("--num_puzzles and --num_halting must be >= 1.")
  if f.halt_max_steps is not None and f.halt_max_steps < 1:
    raise app.UsageError("--halt_max_steps must be >= 1.")
  try:
    result = visualize(f.workdir, f.out, f.num_puzzles, f.split, f.halt_max_steps,
                       f.num_halting)
  except inference.InferenceError as e:
    sys.exit(f"hrm_jax.visualize: error: {e}")
  print(f"Wrote {result['html']} and {len(result['pngs'])} PNG files.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
