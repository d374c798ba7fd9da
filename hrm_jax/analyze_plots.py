"""The figures of `analyze`: residuals, participation ratios, ACT compute.

Pure drawing: each function takes the dict `analyze` writes to analysis.json
(so the pictures can be redrawn from the file alone) and returns a matplotlib
Figure made with `pictures.new_figure` (Agg, no pyplot state).
"""
# pylint: disable=invalid-name
from __future__ import annotations

from typing import Any, Iterator

from matplotlib.figure import Figure
import numpy as np

from hrm_jax import pictures

png_bytes = pictures.png_bytes
H_COLOUR, L_COLOUR = "#c44e52", "#4c72b0"
STYLES = {"trained": "-", "untrained": ":"}


def _names(result: dict[str, Any]) -> tuple[str, str]:
  """How the two states are called: TRM's answer y and latent z."""
  return ("y (answer)", "z (latent)") if result["arch"] == "trm" else ("z_H", "z_L")


def _runs(result: dict[str, Any]) -> list[str]:
  return [k for k in ("trained", "untrained") if k in result]


def residual_figure(result: dict[str, Any]) -> Figure:
  """Forward residual of each module at every one of its updates (Fig. 3)."""
  h_name, l_name = _names(result)
  M = result["protocol"]["segments_traced"]
  fig = pictures.new_figure(11, 4.2)
  ax = fig.subplots()
  for run in _runs(result):
    res = result[run]["residuals"]
    n_L, n_H = len(res["z_L"]["mean"]), len(res["z_H"]["mean"])
    per_H = n_L // n_H  # L-updates per H-update
    x_L = np.arange(1, n_L + 1)
    x_H = per_H * np.arange(1, n_H + 1)  # an H-update follows its L-updates
    ax.plot(x_L, res["z_L"]["mean"], STYLES[run], color=L_COLOUR, marker=".",
            label=f"{l_name}, {run}")
    ax.plot(x_H, res["z_H"]["mean"], STYLES[run], color=H_COLOUR, marker="o",
            markersize=4, label=f"{h_name}, {run}")
  per_segment = len(result["trained"]["residuals"]["z_L"]["mean"]) // M
  for s in range(1, M):
    ax.axvline(s * per_segment + 0.5, color="#999999", lw=0.6, ls="--")
  ax.set_yscale("log")
  ax.set_xlabel(f"{l_name} update (dashed: segment boundaries, {M} segments)")
  ax.set_ylabel("forward residual ||z_t - z_(t-1)|| / ||z_(t-1)||")
  ax.set_title(f"Hierarchical convergence: mean over {result['protocol']['num_puzzles']} "
               "test puzzles", fontsize=10)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  return fig


def pr_figure(result: dict[str, Any]) -> Figure:
  """PR of each module, trained vs untrained vs the paper, and PR vs puzzles."""
  h_name, l_name = _names(result)
  runs = _runs(result)
  fig = pictures.new_figure(12, 4.2)
  bars, curve = fig.subplots(1, 2)
  groups = runs + ["paper (HRM, Sudoku)"]
  values = [[result[r]["pr"]["pr_z_L"], result[r]["pr"]["pr_z_H"]] for r in runs]
  values.append([result["paper"]["pr_z_L"], result["paper"]["pr_z_H"]])
  x = np.arange(len(groups))
  for j, (name, colour) in enumerate(((l_name, L_COLOUR), (h_name, H_COLOUR))):
    heights = [v[j] for v in values]
    drawn = bars.bar(x + (j - 0.5) * 0.38, heights, 0.38, color=colour, label=name)
    bars.bar_label(drawn, fmt="%.1f", fontsize=8)
  labels = [f"{g}\nratio {v[1] / v[0]:.2f}" for g, v in zip(groups, values)]
  bars.set_xticks(x, labels, fontsize=8)
  bars.set_ylabel("participation ratio")
  bars.set_title("Dimensionality of the final states", fontsize=10)
  bars.legend(fontsize=8)
  for run in runs:
    vs = result[run]["pr"]["vs_puzzles"]
    curve.plot(vs["n"], vs["z_H"], STYLES[run], color=H_COLOUR, marker="o",
               markersize=3, label=f"{h_name}, {run}")
    curve.plot(vs["n"], vs["z_L"], STYLES[run], color=L_COLOUR, marker="o",
               markersize=3, label=f"{l_name}, {run}")
  curve.set_xscale("log")
  curve.set_xlabel("test puzzles in the covariance")
  curve.set_ylabel("participation ratio")
  curve.set_title("PR against the number of puzzles (paper Fig. 8b)", fontsize=10)
  curve.grid(alpha=0.3, which="both")
  curve.legend(fontsize=8)
  fig.tight_layout()
  return fig


def act_figure(result: dict[str, Any]) -> Figure:
  """Mean segments used under adaptive halting, and accuracy against segments."""
  fig = pictures.new_figure(12, 4.2)
  used, scaling = fig.subplots(1, 2)
  train_M = result["model"]["train_halt_max_steps"]
  for run in _runs(result):
    act = result[run]["act"]
    ad = act["adaptive"]
    used.plot(ad["halt_max_steps"], ad["mean_segments"], STYLES[run], marker="o",
              color="#4c72b0", label=f"{run}: mean segments used")
    scaling.plot(act["segments"], act["exact_accuracy"], STYLES[run], color="#4c72b0",
                 label=f"{run}: all M segments")
    scaling.plot(ad["halt_max_steps"], ad["exact_accuracy"], STYLES[run], marker="s",
                 color="#dd8452", label=f"{run}: adaptive halting, M max")
  limits = result["trained"]["act"]["adaptive"]["halt_max_steps"]
  used.plot(limits, limits, color="#999999", lw=0.8, label="M (no early halting)")
  used.set_xscale("log", base=2)
  used.set_yscale("log", base=2)
  used.set_xticks(limits, [str(m) for m in limits])
  ticks = sorted({1, 2, *limits})
  used.set_yticks(ticks, [str(m) for m in ticks])
  used.minorticks_off()
  used.set_xlabel("halt_max_steps M at inference")
  used.set_ylabel("segments")
  used.set_title("ACT compute under adaptive halting", fontsize=10)
  used.legend(fontsize=8)
  used.grid(alpha=0.3, which="both")
  scaling.axvline(train_M, color="#999999", ls="--", lw=0.8)
  scaling.text(train_M, 0.02, f" trained with M={train_M}", fontsize=8, color="#666666")
  scaling.set_xscale("log", base=2)
  scaling.set_xticks(ticks, [str(m) for m in ticks])
  scaling.minorticks_off()
  scaling.set_ylim(-0.02, 1.02)
  scaling.set_xlabel("segments at inference")
  scaling.set_ylabel("exact accuracy (test)")
  scaling.set_title("Inference-time scaling", fontsize=10)
  scaling.legend(fontsize=8)
  scaling.grid(alpha=0.3, which="both")
  fig.tight_layout()
  return fig


def figures(result: dict[str, Any]) -> Iterator[tuple[str, str, str, Figure]]:
  """(file name, heading, caption, figure) of every analysis picture."""
  p, h_name, l_name = result["protocol"], *_names(result)
  runs = " vs ".join(_runs(result))
  yield ("residuals.png", "Hierarchical convergence (forward residuals)",
         f"Relative change of {l_name} at each of its updates and of {h_name} at each "
         f"of its updates over {p['segments_traced']} segments, mean over "
         f"{p['num_puzzles']} test puzzles ({runs}); norms over a puzzle's whole state.",
         residual_figure(result))
  yield ("participation_ratio.png", "Dimensionality hierarchy (participation ratio)",
         f"PR of the final {h_name} and {l_name} (after segment {p['segments_traced']}), "
         f"one vector of all positions x units per puzzle, {p['num_puzzles']} test "
         f"puzzles ({runs}); paper: PR(z_L) {result['paper']['pr_z_L']}, PR(z_H) "
         f"{result['paper']['pr_z_H']}.", pr_figure(result))
  yield ("act_compute.png", "ACT compute and inference-time scaling",
         "Left: mean segments used with adaptive halting at each halt_max_steps M. "
         "Right: exact accuracy after each segment when all run, and with adaptive "
         f"halting ({runs}).", act_figure(result))
