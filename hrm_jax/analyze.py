"""The HRM paper's analyses of a trained run, as one command.

    python -m hrm_jax.analyze --workdir=DIR [--compare_untrained] [--num_puzzles=N]

writes DIR/analysis/analysis.json and three PNGs (drawn by `analyze_plots`),
which `visualize` adds to its page, and prints a short table. Any trained or
converted workdir of a recurrent family (HRM; TRM, whose y and z play z_H and
z_L) works. `--compare_untrained` repeats everything on freshly initialised
weights of the same config (`state.init_state`: the family's init, zero puzzle
table, as a run starts), side by side.

Protocol (fixed; chosen to follow the paper's text, Sec. 4 and Figs. 3, 8):
* Puzzles: the first N (default 1000; all if the split is smaller) examples of
  the run's test split, `data.load(config.data, "test")`.
* States: from the family's own `segment(..., trace=True)`, segment after
  segment from the fixed initial states, as `act.rollout` runs them: z_L after
  every L-update and z_H after every H-update (TRM: z after every latent
  update, y after every answer update). Every puzzle runs M segments, M = the
  run's evaluation setting (config.eval.halt_max_steps, else the model's
  halt_max_steps), with no early halting, as the run's evaluation.
1. Hierarchical convergence (Fig. 3): the forward residual of a module at each
   of its updates, r_t = ||z_t - z_{t-1}|| / ||z_{t-1}||, norms over one
   puzzle's whole state (all L positions x D units), z_{t-1} the module's state
   before that update (across segment boundaries the carry; at the first update
   its initial state). Reported: the mean over puzzles, per update, across
   all M segments.
2. Dimensionality (Fig. 8): per module one vector per puzzle, its final state
   (after the last update of segment M) flattened over all positions and units
   (the "neurons" are the module's L x D units, the "conditions" the puzzles);
   PR = (sum lambda)^2 / sum lambda^2 of their covariance over the N puzzles.
   Also PR against the number of puzzles (nested first-n subsets: Fig. 8b's
   "number of trajectories") and, as a check, per-token PR (rows: puzzles x
   positions, D units).
3. ACT compute: with adaptive halting (the family's Q rule, in `act.rollout`)
   at halt_max_steps in SCALING_SEGMENTS, the mean segments used and exact
   accuracy; without it, exact accuracy after every segment up to the largest
   (inference-time scaling), all from one model.
"""
# pylint: disable=invalid-name
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
from typing import Any

from absl import app, flags
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrm_jax import data, errors, evaluation, inference, metrics, models
from hrm_jax import state as state_lib
from hrm_jax.data import puzzles
from hrm_jax.models import act

ANALYSIS_DIR = "analysis"
RESULT_FILE = "analysis.json"
SCALING_SEGMENTS = (4, 8, 16, 32)
DEFAULT_NUM_PUZZLES = 1000
# The paper (arXiv 2506.21734, Fig. 8), trained HRM on Sudoku-Extreme; the
# untrained network's two values show no gap.
PAPER = {"pr_z_L": 30.22, "pr_z_H": 89.95, "ratio": 2.98, "mouse_cortex_ratio": 2.25,
         "untrained_pr": [42.09, 40.75]}


class AnalysisError(ValueError):
  """A workdir or option analyze cannot use; the message says why."""


# ------------------------------------------------------------------ maths


def participation_ratio(X_NxF: np.ndarray) -> float:
  """PR = (sum eig)^2 / sum eig^2 of the covariance of the N rows of X.

  Computed exactly as tr(C)^2 / tr(C^2) from the Gram matrix of the centred
  data on its smaller side (the covariance's normalisation cancels), so wide
  states (L x D units) need no F x F matrix and no eigendecomposition.
  """
  X = np.asarray(X_NxF, np.float64)
  X = X - X.mean(axis=0, keepdims=True)
  G = X @ X.T if X.shape[0] <= X.shape[1] else X.T @ X
  return _pr_of_gram(G)


def _pr_of_gram(G: np.ndarray) -> float:
  trace_sq = float(np.trace(G)) ** 2
  frob_sq = float(np.sum(G * G))
  return trace_sq / frob_sq if frob_sq > 0 else 0.0


def pr_vs_count(X_NxF: np.ndarray, counts: list[int]) -> list[float]:
  """PR of the first n rows for each n in `counts` (one Gram matrix for all)."""
  X = np.asarray(X_NxF, np.float64)
  K = X @ X.T
  out = []
  for n in counts:
    H = np.eye(n) - 1.0 / n  # centring of the first n rows
    out.append(_pr_of_gram(H @ K[:n, :n] @ H))
  return out


def relative_residuals(prev_BxLxD: jax.Array, states_UxBxLxD: jax.Array) -> jax.Array:
  """[U, B]: ||z_t - z_{t-1}|| / ||z_{t-1}|| over each row's [L, D], where the
  states before update t are prev, states[0], ..., states[U-2]."""
  seq = jnp.concatenate([prev_BxLxD[None], states_UxBxLxD]).astype(jnp.float32)
  norm = lambda a: jnp.sqrt(jnp.sum(jnp.square(a), axis=(-2, -1)))
  return norm(seq[1:] - seq[:-1]) / norm(seq[:-1])


# ------------------------------------------------------------------ runs


def _check_traceable(cfg: Any) -> None:
  segment = models.family_of(cfg).segment
  if "trace" not in inspect.signature(segment).parameters:
    raise AnalysisError(
        f"The {cfg.ARCH!r} family's segment has no trace of its recurrent states; "
        "the analyses need a recurrent family (hrm or trm).")


@functools.lru_cache(maxsize=8)
def _traced_segment_fn(model: Any):
  """One jitted segment that returns the new carry, the argmax answer and the
  residuals of its updates, instead of the (large) states themselves."""
  segment = models.family_of(model.config).segment

  def run(variables, z_H, z_L, inputs_BxS, rows_BxE):
    (new_H, new_L), logits, _, _, states = segment(
        model, variables, z_H, z_L, inputs_BxS, rows_BxE, trace=True)
    return ((new_H, new_L), jnp.argmax(logits, -1).astype(jnp.int32),
            relative_residuals(z_L, states["z_L"]), relative_residuals(z_H, states["z_H"]))

  return jax.jit(run)


def trace_run(model: Any, weights: state_lib.Weights, inputs_NxS: np.ndarray,
              ids_N: np.ndarray, num_segments: int, batch_size: int = 256
              ) -> dict[str, np.ndarray]:
  """Runs `num_segments` segments on every row, from the fixed initial states.

  Returns:
    residual_z_L [M * L-updates per segment, N], residual_z_H [M * H-updates, N]
    (float32), final_z_H / final_z_L [N, L, D] (float32, after segment M),
    predictions [N, S] (argmax after segment M).
  """
  cfg = model.config
  variables = weights.variables()
  H_init_D, L_init_D = act.initial_states(model, variables)
  run = _traced_segment_fn(model)
  N = len(inputs_NxS)
  B = max(1, min(batch_size, N))
  parts = []
  for start in range(0, N, B):
    chunk_x, chunk_id = inputs_NxS[start:start + B], ids_N[start:start + B]
    keep, pad = len(chunk_x), B - len(chunk_x)  # one shape, one compile
    batch = {"inputs": np.pad(chunk_x, ((0, pad), (0, 0))).astype(np.int32),
             "labels": np.full((B, cfg.seq_len), puzzles.IGNORE_LABEL_ID, np.int32),
             "puzzle_identifiers": np.pad(chunk_id, (0, pad)).astype(np.int32)}
    # The carry of a fresh row, as act.rollout starts it.
    carry = act.reset_halted(act.initial_carry(cfg, B), batch, H_init_D, L_init_D)
    rows_BxE = weights.puzzle_emb[carry.puzzle_identifiers_B]
    z_H, z_L = carry.z_H_BxLxD, carry.z_L_BxLxD
    res_L, res_H = [], []
    for _ in range(num_segments):
      (z_H, z_L), prediction, r_L, r_H = run(variables, z_H, z_L, carry.inputs_BxS,
                                              rows_BxE)
      res_L.append(np.asarray(r_L)[:, :keep])
      res_H.append(np.asarray(r_H)[:, :keep])
    parts.append({"residual_z_L": np.concatenate(res_L), "residual_z_H": np.concatenate(res_H),
                  "final_z_H": np.asarray(z_H, np.float32)[:keep],
                  "final_z_L": np.asarray(z_L, np.float32)[:keep],
                  "predictions": np.asarray(prediction)[:keep]})
  return {k: np.concatenate([p[k] for p in parts], axis=1 if k.startswith("residual") else 0)
          for k in parts[0]}


def _pr_counts(N: int) -> list[int]:
  counts = [n for n in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if n < N]
  return counts + [N]


def dimensionality(final_z_H: np.ndarray, final_z_L: np.ndarray) -> dict[str, Any]:
  """Item 2 of the protocol, from the final states [N, L, D] of each module."""
  N = final_z_H.shape[0]
  out: dict[str, Any] = {"num_puzzles": N}
  counts = _pr_counts(N)
  out["vs_puzzles"] = {"n": counts}
  for name, z in (("z_H", final_z_H), ("z_L", final_z_L)):
    flat = z.reshape(N, -1)
    out[f"pr_{name}"] = participation_ratio(flat)
    out["vs_puzzles"][name] = pr_vs_count(flat, counts)
    out[f"per_token_pr_{name}"] = participation_ratio(z.reshape(-1, z.shape[-1]))
  out["ratio"] = out["pr_z_H"] / out["pr_z_L"]
  out["per_token_ratio"] = out["per_token_pr_z_H"] / out["per_token_pr_z_L"]
  return out


def act_compute(loaded: inference.Loaded, inputs: np.ndarray, ids: np.ndarray,
                labels: np.ndarray, batch_size: int) -> dict[str, Any]:
  """Item 3: one full rollout of max(SCALING_SEGMENTS) segments (accuracy after
  each), and one adaptive rollout per halt_max_steps in SCALING_SEGMENTS."""
  M = max(SCALING_SEGMENTS)
  full = inference.predict(loaded, inputs, ids, halt_max_steps=M, batch_size=batch_size)
  exact_M = [float(metrics.exact_rows(full["trajectory"][m], labels).mean()) for m in range(M)]
  adaptive = {"halt_max_steps": list(SCALING_SEGMENTS), "mean_segments": [],
              "exact_accuracy": []}
  for m in SCALING_SEGMENTS:
    run = inference.predict(loaded, inputs, ids, halt_max_steps=m, adaptive=True,
                            batch_size=batch_size)
    adaptive["mean_segments"].append(float(run["steps"].mean()))
    adaptive["exact_accuracy"].append(float(metrics.exact_rows(run["predictions"],
                                                               labels).mean()))
  return {"segments": list(range(1, M + 1)), "exact_accuracy": exact_M,
          "adaptive": adaptive, "trajectory": full["trajectory"]}


def analyze_weights(loaded: inference.Loaded, split: data.PuzzleSplit, index: np.ndarray,
                    num_segments: int, batch_size: int) -> dict[str, Any]:
  """The three analyses of one set of weights on the examples `index`."""
  inputs = split.inputs[index].astype(np.int32)
  ids = split.example_puzzle_identifiers()[index].astype(np.int32)
  labels = puzzles.loss_labels(split.labels[index], split.metadata.ignore_label_id)
  traced = trace_run(loaded.model, loaded.weights, inputs, ids, num_segments, batch_size)
  result: dict[str, Any] = {
      "residuals": {k: {"mean": traced[f"residual_{k}"].mean(axis=1).tolist(),
                        "median": np.median(traced[f"residual_{k}"], axis=1).tolist()}
                    for k in ("z_L", "z_H")},
      "pr": dimensionality(traced["final_z_H"], traced["final_z_L"]),
  }
  result["act"] = act_compute(loaded, inputs, ids, labels, batch_size)
  # The traced segments and act.rollout must be the same computation: the
  # answers after segment M agree (a check on this module, kept in the JSON).
  rollout_M = result["act"].pop("trajectory")[num_segments - 1]
  result["prediction_agreement"] = float(np.mean(np.all(
      rollout_M == traced["predictions"], axis=-1)))
  result["exact_accuracy_traced"] = float(metrics.exact_rows(traced["predictions"],
                                                             labels).mean())
  return result


def untrained(loaded: inference.Loaded, seed: int) -> inference.Loaded:
  """The same model freshly initialised, as a run starts (`state.init_state`)."""
  fresh = state_lib.init_state(loaded.model, optax.identity(), jax.random.key(seed))
  return dataclasses.replace(loaded, weights=fresh.eval_weights(), step=0)


# ------------------------------------------------------------------ command


def load(workdir: str) -> tuple[inference.Loaded, data.PuzzleSplit]:
  """The run's weights and test split; AnalysisError (one line) if either is missing."""
  try:
    loaded = inference.load_workdir(workdir)
  except inference.InferenceError as e:
    raise AnalysisError(str(e)) from None
  _check_traceable(loaded.model.config)
  try:
    split = data.load(loaded.config.data, "test")
  except (data.DataError, OSError) as e:
    reason = " ".join(str(e).split())
    raise AnalysisError(
        f"The run's test split cannot be loaded ({reason}); analyze runs the run's own "
        f"dataset (config.data in {os.path.join(workdir, 'config.json')}): build it, or "
        "point config.data.source / data_dir at where it is.") from None
  try:
    inference.check_compatible(loaded, str(loaded.config.data.family), split.inputs.shape[1])
  except inference.InferenceError as e:
    raise AnalysisError(str(e)) from None
  return loaded, split


def eval_segments(loaded: inference.Loaded) -> int:
  """M of the protocol: the run's evaluation segments."""
  return evaluation.segments(loaded.config.get("eval", {}), loaded.model.config)


def analyze(workdir: str, compare_untrained: bool = False,
            num_puzzles: int = DEFAULT_NUM_PUZZLES, out_dir: str | None = None,
            batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
  """Runs the protocol; writes analysis.json and the PNGs; returns the JSON dict."""
  from hrm_jax import analyze_plots  # pylint: disable=import-outside-toplevel
  if num_puzzles < 2:
    raise AnalysisError(f"--num_puzzles={num_puzzles}: the covariance needs >= 2 puzzles.")
  loaded, split = load(workdir)
  index = np.arange(min(num_puzzles, split.num_examples))
  if len(index) < 2:
    raise AnalysisError(f"The test split has {split.num_examples} example(s); PR needs >= 2.")
  M = eval_segments(loaded)
  cfg = loaded.model.config
  result: dict[str, Any] = {
      "workdir": os.fspath(workdir), "step": loaded.step, "arch": cfg.ARCH,
      "puzzle_family": loaded.family,
      "model": {"H_cycles": cfg.H_cycles, "L_cycles": cfg.L_cycles,
                "hidden_size": cfg.hidden_size, "num_positions": cfg.num_positions,
                "train_halt_max_steps": cfg.halt_max_steps},
      "protocol": {"num_puzzles": len(index), "split": "test", "segments_traced": M,
                   "states": "final state after segment M, flattened over all "
                             "positions x units, one vector per puzzle",
                   "residual_norm": "per puzzle over all positions x units; mean over "
                                    "puzzles",
                   "scaling_segments": list(SCALING_SEGMENTS), "untrained_seed": seed},
      "paper": PAPER,
  }
  result["trained"] = analyze_weights(loaded, split, index, M, batch_size)
  if compare_untrained:
    result["untrained"] = analyze_weights(untrained(loaded, seed), split, index, M,
                                          batch_size)
  out = epath.Path(out_dir or epath.Path(workdir) / ANALYSIS_DIR)
  out.mkdir(parents=True, exist_ok=True)
  result["figures"] = []
  for name, heading, caption, fig in analyze_plots.figures(result):
    (out / name).write_bytes(analyze_plots.png_bytes(fig))
    result["figures"].append({"file": name, "heading": heading, "caption": caption})
  tmp = out / f".{RESULT_FILE}.tmp"
  tmp.write_text(json.dumps(result, indent=1))
  tmp.replace(out / RESULT_FILE)
  return result


def html_sections(workdir: str) -> list[tuple[str, bytes, str]]:
  """(heading, PNG bytes, caption) of DIR/analysis's figures, for `visualize`'s
  page; [] when the run has not been analysed."""
  out = epath.Path(workdir) / ANALYSIS_DIR
  path = out / RESULT_FILE
  if not path.exists():
    return []
  sections = []
  for figure in json.loads(path.read_text()).get("figures", []):
    if (out / figure["file"]).exists():
      sections.append((figure["heading"], (out / figure["file"]).read_bytes(),
                       figure["caption"]))
  return sections


def table(result: dict[str, Any]) -> str:
  """The short table the command prints."""
  runs = [k for k in ("trained", "untrained") if k in result]
  h, l = ("y", "z") if result["arch"] == "trm" else ("z_H", "z_L")
  rows = [(f"PR({h})", lambda r: r["pr"]["pr_z_H"], PAPER["pr_z_H"]),
          (f"PR({l})", lambda r: r["pr"]["pr_z_L"], PAPER["pr_z_L"]),
          (f"PR ratio {h}/{l}", lambda r: r["pr"]["ratio"], PAPER["ratio"]),
          ("per-token PR ratio", lambda r: r["pr"]["per_token_ratio"], None)]
  for m in SCALING_SEGMENTS:
    rows.append((f"exact acc, {m} segments", lambda r, m=m: r["act"]["exact_accuracy"][m - 1],
                 None))
  for i, m in enumerate(SCALING_SEGMENTS):
    rows.append((f"adaptive M={m}: segments", lambda r, i=i: r["act"]["adaptive"]
                 ["mean_segments"][i], None))
    rows.append((f"adaptive M={m}: exact acc", lambda r, i=i: r["act"]["adaptive"]
                 ["exact_accuracy"][i], None))
  for k, name in (("z_L", l), ("z_H", h)):
    rows.append((f"last residual {name}", lambda r, k=k: r["residuals"][k]["mean"][-1], None))
  lines = [f"{'':28s}" + "".join(f"{k:>12s}" for k in runs) + f"{'paper':>10s}"]
  for label, get, paper in rows:
    lines.append(f"{label:28s}" + "".join(f"{get(result[k]):12.4g}" for k in runs) +
                 (f"{paper:10.4g}" if paper is not None else ""))
  return "\n".join(lines)


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run (or convert output) directory.")
  flags.DEFINE_bool("compare_untrained", False,
                    "Also analyse freshly initialised weights of the same config.")
  flags.DEFINE_integer("num_puzzles", DEFAULT_NUM_PUZZLES,
                       "First test puzzles to use (all if the split is smaller).")
  flags.DEFINE_string("out", None, "Output directory (default WORKDIR/analysis).")
  flags.DEFINE_integer("batch_size", 256, "Rows per forward pass.")


def main(argv):
  errors.tool_logging("hrm_jax.analyze", argv)
  f = flags.FLAGS
  try:
    if not f.workdir:
      raise errors.UsageError("--workdir is required (a training run's directory).")
    result = analyze(f.workdir, f.compare_untrained, f.num_puzzles, f.out, f.batch_size)
  except (AnalysisError, errors.UsageError) as e:  # one line (the tools' error map)
    errors.fail("hrm_jax.analyze", e, hint=False, default_code=errors.RUNTIME)
  print(table(result))
  out = f.out or os.path.join(f.workdir, ANALYSIS_DIR)
  print(f"Wrote {os.path.join(out, RESULT_FILE)} and {len(result['figures'])} PNG files.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
