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

from hrm_jax import data, sampling, workdir as workdir_lib
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
def _rollout_fn(model: Any, halt_max_steps: int, adaptive: bool, num_samples: int = 1,
                latent_noise: float = 0.0) -> Callable:
  """One jitted rollout per (model, M, adaptive, K, sigma): the tools call it for
  several batches of the same shape. Outputs are per sample: [B, K, ...]."""
  K = num_samples

  def run(weights, batch, rng):
    carry, outputs, trajectory = act.rollout(
        model, weights.variables(), weights.puzzle_emb, batch,
        halt_max_steps=halt_max_steps, adaptive_halting=adaptive, keep_trajectory=True,
        num_samples=K, latent_noise=latent_noise, rng=rng, track_halt=True)
    split = lambda x: sampling.split_samples(x, K)
    c = sampling.sample_arrays(outputs, carry.inputs_BxS, K)
    return {"predictions": c["predictions"], "q_halt_logits": c["q_halt"],
            "q_halt_step": c["q_halt_step"], "confidence": c["confidence"],
            "trajectory": jax.vmap(split)(trajectory), "steps": split(carry.steps_B)}

  return jax.jit(run)


def predict(loaded: Loaded, inputs_NxS: np.ndarray, puzzle_identifiers_N: np.ndarray,
            *, halt_max_steps: int | None = None, adaptive: bool = False,
            batch_size: int = 64, num_samples: int = 1, latent_noise: float = 0.0,
            select: str = "q_halt", seed: int = 0) -> dict[str, np.ndarray]:
  """Runs a fresh ACT carry over any number of rows; per-row numpy outputs.

  Args:
    loaded: the model.
    inputs_NxS: token ids.
    puzzle_identifiers_N: puzzle-embedding rows to use (0 = blank).
    halt_max_steps: segments at most (default: the model's); more than the
      training value is the paper's inference-time scaling.
    adaptive: stop each row when its Q head says halt instead of always
      running halt_max_steps segments.
    batch_size: rows per forward pass (the last chunk is padded); each runs
      batch_size * num_samples trajectories.
    num_samples: K trajectories per row (`act.rollout`), one chosen by `select`.
    latent_noise: sigma of the noise on the carry before each segment.
    select: a rule of `sampling.SELECT_RULES` ("checker" runs the model's
      puzzle family's rule check on every candidate).
    seed: seeds the noise (chunk c folds in c): the same call gives the same
      samples.

  Returns:
    predictions [N,S], trajectory [M,N,S] (argmax after each segment; rows
    that halted early repeat their final answer), steps [N] (segments used),
    q_halt_logits [N] and q_halt_confidence [N] = sigmoid(q_halt), all of the
    last segment each row ran, of the chosen sample; and every sample's
    sample_predictions [N,K,S], sample_q_halt_logits [N,K], sample_steps
    [N,K]; with the family's rule check (not ARC), sample_accepted [N,K];
    with select="checker", unsure [N] (no candidate passed the check).
  """
  M = halt_max_steps or loaded.model.config.halt_max_steps
  if M < 1:
    raise InferenceError(f"halt_max_steps must be >= 1, got {M}.")
  try:
    sampling.check_options(num_samples, latent_noise, select, prefix="")
  except ValueError as e:
    raise InferenceError(str(e)) from None
  check = data.family(loaded.family).check_answer if loaded.family else None
  try:
    sampling.check_family(select, loaded.family, check, prefix="")
  except ValueError as e:
    raise InferenceError(str(e)) from None
  inputs = np.asarray(inputs_NxS, np.int32)
  ids = np.asarray(puzzle_identifiers_N, np.int32).reshape(-1)
  N = len(inputs)
  B = max(1, min(batch_size, N))
  K = int(num_samples)
  run = _rollout_fn(loaded.model, int(M), bool(adaptive), K, float(latent_noise))
  key = jax.random.key(seed)
  parts = []
  for chunk, start in enumerate(range(0, N, B)):
    chunk_x, chunk_id = inputs[start:start + B], ids[start:start + B]
    pad = B - len(chunk_x)  # one shape, one compile
    batch = {
        "inputs": np.pad(chunk_x, ((0, pad), (0, 0))),
        # No labels: the rollout's metrics are not computed here.
        "labels": np.full((B, inputs.shape[1]), puzzles.IGNORE_LABEL_ID, np.int32),
        "puzzle_identifiers": np.pad(chunk_id, (0, pad)),
    }
    out = jax.device_get(run(loaded.weights, batch, jax.random.fold_in(key, chunk)))
    keep = len(chunk_x)
    parts.append({k: (v[:, :keep] if k == "trajectory" else v[:keep])
                  for k, v in out.items()})
  samples = {k: np.concatenate([p[k] for p in parts], axis=1 if k == "trajectory" else 0)
             for k in parts[0]}
  accepted = None
  if check is not None and (K > 1 or select == "checker"):
    accepted = sampling.accepted(check, inputs, samples["predictions"])
  choice, unsure = sampling.choose(select, samples["predictions"],
                                   samples["q_halt_logits"], accepted,
                                   q_halt_step_BxK=samples["q_halt_step"],
                                   confidence_BxK=samples["confidence"])
  choice = np.asarray(choice)
  out = {k: sampling.take(samples[k], choice)
         for k in ("predictions", "steps", "q_halt_logits")}
  out["trajectory"] = samples["trajectory"][:, np.arange(N), choice]  # [M, N, S]
  out["q_halt_confidence"] = sigmoid(out["q_halt_logits"])
  out.update(sample_predictions=samples["predictions"],
             sample_q_halt_logits=samples["q_halt_logits"], sample_steps=samples["steps"])
  if accepted is not None:
    out["sample_accepted"] = accepted
  if unsure is not None:
    out["unsure"] = np.asarray(unsure)
  return out


def sigmoid(x: Any) -> Any:
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
