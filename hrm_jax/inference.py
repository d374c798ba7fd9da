"""Running a trained model on puzzles: shared by `solve`, `visualize` and `analyze`.

Loading is `workdir.load_weights` (weights only, onto one device: a single
puzzle or a picture batch gains nothing from a mesh); this module checks that a
puzzle fits the model and runs the model's own rollout (`act.rollout`) over any
number of rows, padded and chunked into equal batches so each setting compiles
once. It sits below the trainer: nothing here imports `train`, `steps` or
`optim`.
"""
# pylint: disable=invalid-name
from __future__ import annotations

import functools
from typing import Any, Callable

from etils import epath
import jax
import numpy as np

from hrm_jax import data, workdir as workdir_lib
from hrm_jax.data import puzzles
from hrm_jax.models import act


class InferenceError(ValueError):
  """A checkpoint, puzzle or option the tools cannot use; the message says why."""


Loaded = workdir_lib.TrainedModel


def load_workdir(directory: epath.PathLike) -> Loaded:
  """The newest checkpoint's weights of a run (or a converted model), on one device."""
  try:
    return workdir_lib.load_weights(directory)
  except workdir_lib.WorkdirError as e:
    raise InferenceError(str(e)) from None


def describe(family: str, seq_len: int) -> str:
  return data.family(family).describe(seq_len)


def check_compatible(loaded: Loaded, family: str, seq_len: int) -> None:
  """Raises InferenceError unless `loaded` can solve a `family` puzzle of seq_len."""
  cfg = loaded.model.config
  if loaded.family != family:
    raise InferenceError(
        f"The model in {loaded.directory!r} was trained on {loaded.family} "
        f"({describe(loaded.family, cfg.seq_len)}), but you gave a {family} puzzle.")
  if seq_len != cfg.seq_len:
    raise InferenceError(
        f"Puzzle size does not match the model: you gave a "
        f"{describe(family, seq_len)}, the model solves {describe(family, cfg.seq_len)}"
        f" (seq_len {cfg.seq_len}).")
  if not data.family(family).encodes(cfg.vocab_size, seq_len):
    raise InferenceError(
        f"The model's vocabulary ({cfg.vocab_size} tokens) is not that of a "
        f"{describe(family, seq_len)}: is it a model of another puzzle family?")


@functools.lru_cache(maxsize=16)
def _rollout_fn(model: Any, halt_max_steps: int, adaptive: bool) -> Callable:
  """One jitted rollout per (model, M, adaptive): the tools call it for several
  batches of the same shape."""

  def run(weights, batch):
    carry, outputs, trajectory = act.rollout(
        model, weights.variables(), weights.puzzle_emb, batch,
        halt_max_steps=halt_max_steps, adaptive_halting=adaptive, keep_trajectory=True)
    return {"predictions": outputs["logits"].argmax(-1).astype(np.int32),
            "trajectory": trajectory, "steps": carry.steps_B,
            "q_halt_logits": outputs["q_halt_logits"]}

  return jax.jit(run)


def predict(loaded: Loaded, inputs_NxS: np.ndarray, puzzle_identifiers_N: np.ndarray,
            *, halt_max_steps: int | None = None, adaptive: bool = False,
            batch_size: int = 64) -> dict[str, np.ndarray]:
  """Runs a fresh ACT carry over any number of rows; per-row numpy outputs.

  Args:
    loaded: the model.
    inputs_NxS: token ids.
    puzzle_identifiers_N: puzzle-embedding rows to use (0 = blank).
    halt_max_steps: segments at most (default: the model's); more than the
      training value is the paper's inference-time scaling.
    adaptive: stop each row when its Q head says halt instead of always
      running halt_max_steps segments.
    batch_size: rows per forward pass (the last chunk is padded).

  Returns:
    predictions [N,S], trajectory [M,N,S] (argmax after each segment; rows
    that halted early repeat their final answer), steps [N] (segments used),
    q_halt_logits [N] and q_halt_confidence [N] = sigmoid(q_halt), all of the
    last segment each row ran.
  """
  M = halt_max_steps or loaded.model.config.halt_max_steps
  if M < 1:
    raise InferenceError(f"halt_max_steps must be >= 1, got {M}.")
  inputs = np.asarray(inputs_NxS, np.int32)
  ids = np.asarray(puzzle_identifiers_N, np.int32).reshape(-1)
  N = len(inputs)
  B = max(1, min(batch_size, N))
  run = _rollout_fn(loaded.model, int(M), bool(adaptive))
  parts = []
  for start in range(0, N, B):
    chunk_x, chunk_id = inputs[start:start + B], ids[start:start + B]
    pad = B - len(chunk_x)  # one shape, one compile
    batch = {
        "inputs": np.pad(chunk_x, ((0, pad), (0, 0))),
        # No labels: the rollout's metrics are not computed here.
        "labels": np.full((B, inputs.shape[1]), puzzles.IGNORE_LABEL_ID, np.int32),
        "puzzle_identifiers": np.pad(chunk_id, (0, pad)),
    }
    out = jax.device_get(run(loaded.weights, batch))
    keep = len(chunk_x)
    parts.append({k: (v[:, :keep] if k == "trajectory" else v[:keep])
                  for k, v in out.items()})
  out = {k: np.concatenate([p[k] for p in parts], axis=1 if k == "trajectory" else 0)
         for k in parts[0]}
  out["q_halt_confidence"] = sigmoid(out["q_halt_logits"])
  return out


def sigmoid(x: Any) -> Any:
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
