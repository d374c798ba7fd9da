"""Test-time compute: choosing one answer among K sampled trajectories.

`act.rollout(..., num_samples=K, latent_noise=sigma)` runs every row K times
(one batch of B*K rows, row b's samples at b*K .. b*K+K-1) with Gaussian noise
on the carry before each segment; this module owns what happens to the K
candidates afterwards, for the trainer's evaluation (`steps.eval_step`, the
evaluators), the tools (`inference.predict`, `solve`) and the benchmarks:

  "q_halt"   the candidate with the highest final q_halt logit (the Q head's
             confidence that the answer is right; Probabilistic TRM);
  "vote"     the most frequent prediction, ties broken by the highest q_halt
             among the tied candidates;
  "first_halt" the candidate whose Q head said halt first (`q_halt_step`, the
             family's halting rule applied after every segment, also when the
             evaluation runs every segment), ties by the highest q_halt: an
             ensemble's answer is the first trajectory to halt ("Speed is
             Confidence", arXiv 2601.19085);
  "confidence" the candidate with the highest mean top-1 probability (softmax
             of its logits) over the answer cells, the positions whose input is
             not padding (C-voting, arXiv 2604.13521);
  "checker"  the puzzle family's rule check (`data.family(name).check_answer`):
             among the candidates it accepts, the highest q_halt; when it
             accepts none, the q_halt choice, reported as "unsure". Families
             without a check (ARC) cannot use it.

Evaluation reports the exact accuracy of every rule (`exact_q_halt`,
`exact_vote`, `exact_first_halt`, `exact_confidence`, `exact_checker`), the oracle (`exact_oracle`: any of the K
right, the headroom a better rule could reach), the mean exact accuracy of one
sample (`exact_mean_sample`: what the noise costs a single trajectory), the
mean number of distinct answers (`distinct_answers`) and the fraction of rows
where the checker accepted none (`checker_unsure`). The selection functions are
jnp and run on device (eval step) and on host numpy arrays alike (checker
selection, which needs the host-side rule check).
"""
# pylint: disable=invalid-name
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax.data.puzzles import IGNORE_LABEL_ID, PAD_ID

SELECT_RULES = ("q_halt", "vote", "first_halt", "confidence", "checker")
# Rules that need nothing but the model's outputs (the eval step applies them on
# device; "checker" falls back to the q_halt choice there and is applied on host).
DEVICE_RULES = ("q_halt", "vote", "first_halt", "confidence")


def check_options(num_samples: int, latent_noise: float, select: str,
                  prefix: str = "config.eval.") -> None:
  """Raises ValueError naming the option and the fix for a bad setting."""
  if int(num_samples) != num_samples or num_samples < 1:
    raise ValueError(f"{prefix}num_samples={num_samples}: use an integer >= 1 "
                     "(1 = one trajectory, today's evaluation).")
  if not latent_noise >= 0.0:  # also catches NaN
    raise ValueError(f"{prefix}latent_noise={latent_noise}: use a standard deviation "
                     ">= 0 (0 = no noise; the carry's states have RMS ~1).")
  if select not in SELECT_RULES:
    raise ValueError(f"{prefix}select={select!r}: use one of {list(SELECT_RULES)}.")


def by_q_halt(q_halt_BxK: Any) -> jax.Array:
  """int32 [B]: the sample with the highest q_halt logit (the first on ties)."""
  return jnp.argmax(jnp.asarray(q_halt_BxK), axis=-1).astype(jnp.int32)


def votes(predictions_BxKxS: Any) -> jax.Array:
  """int32 [B, K]: how many of the K samples predict exactly sample k's answer."""
  p = jnp.asarray(predictions_BxKxS)
  same_BxKxK = jnp.all(p[:, :, None, :] == p[:, None, :, :], axis=-1)
  return jnp.sum(same_BxKxK, axis=-1).astype(jnp.int32)


def by_vote(predictions_BxKxS: Any, q_halt_BxK: Any) -> jax.Array:
  """int32 [B]: a sample of the most frequent answer; ties by the highest q_halt."""
  count_BxK = votes(predictions_BxKxS)
  best_BxK = count_BxK == jnp.max(count_BxK, axis=-1, keepdims=True)
  q = jnp.asarray(q_halt_BxK, jnp.float32)
  return jnp.argmax(jnp.where(best_BxK, q, -jnp.inf), axis=-1).astype(jnp.int32)


def by_first_halt(q_halt_step_BxK: Any, q_halt_BxK: Any) -> jax.Array:
  """int32 [B]: the sample whose Q head said halt first; ties by the highest q_halt."""
  halt = jnp.asarray(q_halt_step_BxK)
  first_BxK = halt == jnp.min(halt, axis=-1, keepdims=True)
  q = jnp.asarray(q_halt_BxK, jnp.float32)
  return jnp.argmax(jnp.where(first_BxK, q, -jnp.inf), axis=-1).astype(jnp.int32)


def by_confidence(confidence_BxK: Any) -> jax.Array:
  """int32 [B]: the sample with the highest mean top-1 probability (the first on ties)."""
  return jnp.argmax(jnp.asarray(confidence_BxK), axis=-1).astype(jnp.int32)


def answer_confidence(logits_NxSxV: Any, inputs_NxS: Any) -> jax.Array:
  """float32 [N]: the mean over answer cells (input not padding) of the top-1
  softmax probability, the "confidence" rule's score."""
  top1_NxS = jnp.max(jax.nn.softmax(jnp.asarray(logits_NxSxV, jnp.float32), axis=-1),
                     axis=-1)
  cells_NxS = jnp.asarray(inputs_NxS) != PAD_ID
  return (jnp.sum(jnp.where(cells_NxS, top1_NxS, 0.0), axis=-1) /
          jnp.maximum(jnp.sum(cells_NxS, axis=-1), 1))


def sample_arrays(outputs: dict[str, Any], inputs_NxS: Any, num_samples: int) -> dict:
  """The [B, K, ...] candidates of a rollout (`act.rollout` outputs, its tiled
  inputs): predictions [B,K,S], q_halt [B,K], q_halt_step [B,K], confidence [B,K]."""
  split = lambda x: split_samples(x, num_samples)
  return {"predictions": split(jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)),
          "q_halt": split(outputs["q_halt_logits"]),
          "q_halt_step": split(outputs["q_halt_step"]),
          "confidence": split(answer_confidence(outputs["logits"], inputs_NxS))}


def by_checker(accepted_BxK: Any, q_halt_BxK: Any) -> tuple[jax.Array, jax.Array]:
  """(int32 [B] choice, bool [B] unsure): the accepted sample with the highest
  q_halt; rows with no accepted sample take the q_halt choice and are unsure."""
  accepted = jnp.asarray(accepted_BxK, jnp.bool_)
  q = jnp.asarray(q_halt_BxK, jnp.float32)
  unsure_B = ~jnp.any(accepted, axis=-1)
  among_accepted = jnp.argmax(jnp.where(accepted, q, -jnp.inf), axis=-1)
  choice = jnp.where(unsure_B, jnp.argmax(q, axis=-1), among_accepted)
  return choice.astype(jnp.int32), unsure_B


def choose(select: str, predictions_BxKxS: Any, q_halt_BxK: Any,
           accepted_BxK: Any = None, *, q_halt_step_BxK: Any = None,
           confidence_BxK: Any = None) -> tuple[jax.Array, jax.Array | None]:
  """(choice [B], unsure [B] or None) by rule `select` (see the module docstring).

  `accepted_BxK` (the rule check of every candidate) is needed by "checker"
  only; without it (on device, or for a family without a check) "checker"
  returns the q_halt choice and unsure None. "first_halt" needs
  `q_halt_step_BxK`, "confidence" `confidence_BxK` (`sample_arrays`).
  """
  if select == "q_halt":
    return by_q_halt(q_halt_BxK), None
  if select == "vote":
    return by_vote(predictions_BxKxS, q_halt_BxK), None
  if select in ("first_halt", "confidence"):
    needed = q_halt_step_BxK if select == "first_halt" else confidence_BxK
    if needed is None:
      raise ValueError(f"select={select!r} needs the candidates' "
                       f"{'q_halt_step' if select == 'first_halt' else 'confidence'}.")
    if select == "first_halt":
      return by_first_halt(q_halt_step_BxK, q_halt_BxK), None
    return by_confidence(confidence_BxK), None
  if select == "checker":
    if accepted_BxK is None:
      return by_q_halt(q_halt_BxK), None
    return by_checker(accepted_BxK, q_halt_BxK)
  raise ValueError(f"select={select!r}: use one of {list(SELECT_RULES)}.")


def take(x_BxK: Any, choice_B: Any) -> Any:
  """x[b, choice[b]] for a [B, K, ...] array (numpy in, numpy out; jax likewise)."""
  if isinstance(x_BxK, np.ndarray):
    choice = np.asarray(choice_B).reshape(-1)
    return x_BxK[np.arange(x_BxK.shape[0]), choice]
  return x_BxK[jnp.arange(x_BxK.shape[0]), jnp.asarray(choice_B)]


def split_samples(x_N: Any, num_samples: int) -> Any:
  """[B*K, ...] rollout rows -> [B, K, ...] (the rollout's order: row-major)."""
  return x_N.reshape((x_N.shape[0] // num_samples, num_samples) + x_N.shape[1:])


def exact_samples(predictions_BxKxS: Any, labels_BxS: Any) -> jax.Array:
  """bool [B, K]: sample k gets every supervised token of row b right."""
  labels = jnp.asarray(labels_BxS)[:, None, :]
  return jnp.all((jnp.asarray(predictions_BxKxS) == labels) | (labels == IGNORE_LABEL_ID),
                 axis=-1)


def sample_metric_sums(predictions_BxKxS: Any, q_halt_BxK: Any, labels_BxS: Any, *,
                       q_halt_step_BxK: Any = None,
                       confidence_BxK: Any = None) -> dict[str, jax.Array]:
  """Sums over the rows with labels (float32): exact_q_halt, exact_vote,
  exact_oracle, exact_mean_sample, distinct_answers and, given what they need,
  exact_first_halt and exact_confidence. Reduced per evaluated row
  (`metrics.REDUCTIONS`)."""
  valid_B = jnp.any(jnp.asarray(labels_BxS) != IGNORE_LABEL_ID, axis=-1)
  exact_BxK = exact_samples(predictions_BxKxS, labels_BxS)
  count_BxK = votes(predictions_BxKxS)
  f32 = lambda x: jnp.sum(jnp.where(valid_B, x, 0)).astype(jnp.float32)
  more = {}
  if q_halt_step_BxK is not None:
    more["exact_first_halt"] = f32(take(exact_BxK, by_first_halt(q_halt_step_BxK,
                                                                  q_halt_BxK)))
  if confidence_BxK is not None:
    more["exact_confidence"] = f32(take(exact_BxK, by_confidence(confidence_BxK)))
  return more | {
      "exact_q_halt": f32(take(exact_BxK, by_q_halt(q_halt_BxK))),
      "exact_vote": f32(take(exact_BxK, by_vote(predictions_BxKxS, q_halt_BxK))),
      "exact_oracle": f32(jnp.any(exact_BxK, axis=-1)),
      "exact_mean_sample": f32(jnp.mean(exact_BxK, axis=-1)),
      # Each distinct answer's k members count 1/k each: their sum is the number
      # of distinct answers.
      "distinct_answers": f32(jnp.sum(1.0 / count_BxK, axis=-1)),
  }


def accepted(check: Callable[[np.ndarray, np.ndarray], str | None], inputs_BxS: Any,
             predictions_BxKxS: Any) -> np.ndarray:
  """bool [B, K]: the family's rule check (None = valid) of every candidate, on host."""
  inputs = np.asarray(inputs_BxS)
  preds = np.asarray(predictions_BxKxS)
  out = np.zeros(preds.shape[:2], np.bool_)
  for b in range(preds.shape[0]):
    for k in range(preds.shape[1]):
      out[b, k] = check(inputs[b], preds[b, k]) is None
  return out


def checker_metric_sums(accepted_BxK: Any, predictions_BxKxS: Any, q_halt_BxK: Any,
                        labels_BxS: Any) -> dict[str, float]:
  """Host sums over the rows with labels: exact_checker and checker_unsure."""
  labels = np.asarray(labels_BxS)
  valid_B = np.any(labels != IGNORE_LABEL_ID, axis=-1)
  choice, unsure = by_checker(accepted_BxK, q_halt_BxK)
  exact_BxK = np.asarray(exact_samples(predictions_BxKxS, labels))
  exact_B = take(exact_BxK, np.asarray(choice))
  return {"exact_checker": float(np.sum(valid_B & exact_B)),
          "checker_unsure": float(np.sum(valid_B & np.asarray(unsure)))}


def candidates(rows: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """(predictions [B,K,S], q_halt logits [B,K]) of host eval rows (`steps.eval_step`
  outputs); one trajectory per row is K = 1."""
  if "sample_predictions" in rows:
    return np.asarray(rows["sample_predictions"]), np.asarray(rows["sample_q_halt_logits"])
  return (np.asarray(rows["predictions"])[:, None],
          np.asarray(rows["q_halt_logits"])[:, None])


def uses_checker(num_samples: int, select: str) -> bool:
  """Whether an evaluation runs the family's rule check on its rows (every rule
  is reported once there are several samples; one sample only for "checker")."""
  return num_samples > 1 or select == "checker"


def check_family(select: str, family: str, check: Callable | None,
                 prefix: str = "config.eval.") -> None:
  """Raises ValueError when "checker" is asked of a family with no rule check."""
  if select == "checker" and check is None:
    raise ValueError(f"{prefix}select='checker' needs a rule check, and {family} puzzles "
                     "have none (an answer is right only if it equals the truth): use "
                     f"one of {list(DEVICE_RULES)}.")
