"""Pictures of a training run: reasoning trajectories, curves, ACT halting.

    python -m hrm_jax.visualize --workdir=DIR [--num_puzzles=4] [--split=test]

writes into DIR/visualize/ (or --out):

* trajectory_<i>.png: for a few held-out puzzles, the input, the target and
  the model's answer after every ACT segment (the paper's "reasoning
  trajectory": Sudoku cells changing, the maze path emerging, the ARC grid
  refining), wrong cells outlined in red, each segment titled correct (green)
  or wrong (red). The segment where the Q head halts (adaptive halting) is
  framed green if its answer is right and red if not; the key is in the PNG.
* curves.png: train loss, train/eval accuracy and eval exact accuracy against
  the step, from DIR/metrics.jsonl.
* act_steps.png: how many segments each puzzle uses under adaptive halting,
  with exact accuracy adaptive vs always running all segments.
* index.html: all of the above (and DIR/analysis's figures when
  `hrm_jax.analyze` has run) in one self-contained page (images embedded
  as base64 data URIs), so it can be mailed or opened from a bucket.

How each family's grids are drawn is `pictures.py`'s.
"""
# pylint: disable=invalid-name
from __future__ import annotations

import os
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
from matplotlib.figure import Figure
import numpy as np

from hrm_jax import analyze, errors, inference, metric_writers, metrics, pictures
from hrm_jax import data
from hrm_jax.data import arc as arc_data
from hrm_jax.data import puzzles

PANEL_INCHES = 2.1
MAX_COLUMNS = 6


# ------------------------------------------------------------------ figures


def trajectory_figure(kind: str, inputs: np.ndarray, target: np.ndarray,
                      trajectory_MxS: np.ndarray, *, halt_segment: int | None = None,
                      title: str = "", ignore_label_id: int | None = 0) -> Figure:
  """Input, target, then the prediction after each segment, in rows.

  Each segment's title says whether its answer is exact (green) or how many
  cells are wrong (red). The segment where the Q head halts is framed: green
  when its answer is right, red when it is wrong; a run that only stops at the
  segment limit gets no frame. The key is drawn in the figure.

  Args:
    kind: puzzle family.
    inputs, target: [S] tokens (target: the stored labels).
    trajectory_MxS: argmax prediction after segments 1..M.
    halt_segment: 1-based segment where the Q head halts (adaptive halting),
      or None when it does not halt before the limit.
    title: figure title.
  """
  M = trajectory_MxS.shape[0]
  panels = 2 + M
  cols = min(panels, MAX_COLUMNS)
  rows = -(-panels // cols)
  fig = pictures.new_figure(cols * PANEL_INCHES, rows * (PANEL_INCHES + 0.35) + 1.0)
  axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
  pictures.render_grid(axes[0], kind, inputs, inputs=inputs)
  axes[0].set_title("input", fontsize=9)
  pictures.render_grid(axes[1], kind, target, inputs=inputs)
  axes[1].set_title("target", fontsize=9)
  for m in range(M):
    ax = axes[2 + m]
    wrong = pictures.render_grid(ax, kind, trajectory_MxS[m], inputs=inputs, target=target)
    exact = bool(metrics.exact_rows(trajectory_MxS[m][None],
                                    puzzles.loss_labels(target[None], ignore_label_id))[0])
    correct = exact and not wrong
    label = f"segment {m + 1}: " + ("correct" if correct else
                                    f"{wrong} wrong" if wrong else "not exact")
    colour = pictures.CORRECT if correct else pictures.WRONG
    if halt_segment == m + 1:
      label += "\nQ head halts here"
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    elif halt_segment is None and m + 1 == M:
      label += "\nlimit (Q head never halted)"
    ax.set_title(label, fontsize=8, color=colour)
  for ax in axes[panels:]:
    ax.set_visible(False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, pictures.LEGEND_INCHES / fig.get_figheight(), 1, 1))
  pictures.trajectory_legend(fig, kind)
  return fig


def curves_figure(records: Sequence[dict[str, Any]]) -> Figure:
  """Loss, accuracy and eval exact accuracy against the step."""
  fig = pictures.new_figure(13, 3.6)
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
        pictures.plain_log_axis(ax.yaxis)  # 2.1, not 2.1x10^0
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
  fig = pictures.new_figure(6.5, 3.6)
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


def _run_examples(loaded: inference.Loaded, split: data.PuzzleSplit,
                  index: np.ndarray, M: int, batch_size: int) -> dict[str, np.ndarray]:
  """Full and adaptive runs of the examples `index`.

  Returns per example: trajectory [M, N, S] (all M segments), steps,
  q_halt_confidence (adaptive run), exact_full and exact_adaptive (every
  supervised token right: the paper's exact accuracy).
  """
  inputs = split.inputs[index]
  labels = puzzles.loss_labels(split.labels[index], split.metadata.ignore_label_id)
  ids = split.example_puzzle_identifiers()[index]
  full = inference.predict(loaded, inputs, ids, halt_max_steps=M, batch_size=batch_size)
  adaptive = inference.predict(loaded, inputs, ids, halt_max_steps=M, adaptive=True,
                               batch_size=batch_size)
  return {"trajectory": full["trajectory"], "steps": adaptive["steps"],
          "q_halt_confidence": adaptive["q_halt_confidence"],
          "exact_full": metrics.exact_rows(full["predictions"], labels),
          "exact_adaptive": metrics.exact_rows(adaptive["predictions"], labels)}


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
  kind = loaded.family
  try:
    split = data.load(loaded.config.data, split_name)
  except (data.DataError, OSError) as e:
    raise inference.InferenceError(
        f"The run's {split_name} split cannot be loaded ({e}); visualize draws "
        "puzzles of the run's own dataset (config.data in its config.json).") from None
  M = halt_max_steps or loaded.model.config.halt_max_steps
  out = epath.Path(out_dir or epath.Path(workdir) / "visualize")
  out.mkdir(parents=True, exist_ok=True)
  for stale in out.glob("trajectory_*.png"):  # from an earlier, larger run
    stale.unlink()
  pids = split.example_puzzle_identifiers()
  written, sections = [], []

  def save(name: str, fig: Figure, heading: str, caption: str) -> None:
    png = pictures.png_bytes(fig)
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
  runs = _run_examples(loaded, split, index, M, batch_size)
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
    exact_M = metrics.exact_rows(
        trajectory, puzzles.loss_labels(target[None], split.metadata.ignore_label_id))
    solved = [m + 1 for m in range(M) if exact_M[m]]
    halt = int(runs["steps"][row])
    name = split.identifiers[pids[e]] if kind == "arc" else f"example {e}"
    halting = (f"Q head halts at segment {halt}" if halt < M else
               f"Q head does not halt before the limit of {M} segments")
    title = (f"{split_name} {name}: " +
             (f"exact from segment {solved[0]}" if solved else "never exact") +
             f"; {halting} (sigmoid(q_halt) {runs['q_halt_confidence'][row]:.2f})")
    save(f"trajectory_{i}.png",
         trajectory_figure(kind, split.inputs[e], target, trajectory,
                           halt_segment=halt if halt < M else None, title=title,
                           ignore_label_id=split.metadata.ignore_label_id),
         f"Reasoning trajectory {i + 1}",
         f"{title}. {pictures.LEGENDS[kind]} Red outline: wrong cell; frame: the "
         "segment where the Q head halts (green: its answer is right, red: wrong).")

  # The paper's analyses, when `python -m hrm_jax.analyze` has run on this workdir.
  sections.extend(analyze.html_sections(workdir))

  cfg = loaded.model.config
  # Only the recurrent families have cycles (the transformer baseline has none).
  cycles = "".join(f"{name} {getattr(cfg, name)}, " for name in ("H_cycles", "L_cycles")
                   if hasattr(cfg, name))
  summary = [
      f"workdir: {workdir} (checkpoint step {loaded.step})",
      f"dataset: {kind}, seq_len {cfg.seq_len}, vocab {cfg.vocab_size}; split "
      f"'{split_name}' ({split.num_examples} examples)",
      f"model: {cfg.ARCH}, {cycles}hidden {cfg.hidden_size}; segments shown: {M}",
  ]
  html_path = out / "index.html"
  pictures.write_html(html_path, f"HRM run {os.path.basename(os.fspath(workdir).rstrip('/'))}",
             summary, sections)
  return {"html": os.fspath(html_path), "pngs": written, "step": loaded.step,
          "halting_steps": runs["steps"][first], "shown": shown}


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run directory.")
  flags.DEFINE_string("out", None, "Output directory (default WORKDIR/visualize).")
  flags.DEFINE_integer("num_puzzles", 4, "Trajectories to draw.")
  flags.DEFINE_enum("split", "test", ["test", "train"], "Split to draw puzzles from.")
  flags.DEFINE_integer("halt_max_steps", None, "Segments (default: the model's).")
  flags.DEFINE_integer("num_halting", 256, "Puzzles for the halting histogram.")


def main(argv):
  errors.tool_logging("hrm_jax.visualize", argv)
  f = flags.FLAGS
  try:
    if not f.workdir:
      raise errors.UsageError("--workdir is required (a training run's directory).")
    if f.num_puzzles < 1 or f.num_halting < 1:
      raise errors.UsageError("--num_puzzles and --num_halting must be >= 1.")
    if f.halt_max_steps is not None and f.halt_max_steps < 1:
      raise errors.UsageError("--halt_max_steps must be >= 1.")
    result = visualize(f.workdir, f.out, f.num_puzzles, f.split, f.halt_max_steps,
                       f.num_halting)
  except (errors.UsageError, inference.InferenceError, OSError) as e:
    errors.fail("hrm_jax.visualize", e, hint=False)
  print(f"Wrote {result['html']} and {len(result['pngs'])} PNG files "
        f"(checkpoint step {result['step']} of {f.workdir}).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
