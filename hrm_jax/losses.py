"""ACT losses and the reference metrics (reference spec §3).

Loss = sum over rows of the per-sequence mean token cross-entropy
     + 0.5 * (sum of BCE(q_halt, sequence exactly correct)
              + sum of BCE(q_continue, bootstrapped target)).
Callers divide by the global batch size. Metrics are *sums* over the rows that
halted at this step and have at least one supervised label; callers reduce them.
"""
# pylint: disable=invalid-name
import jax
import jax.numpy as jnp
import optax

from hrm_jax.data.puzzles import IGNORE_LABEL_ID
from hrm_jax.models.act import ACTCarry

Array = jax.Array


def stablemax_dtype() -> jnp.dtype:
  """float64 (the reference's choice) when `jax_enable_x64` is on, else float32.

  JAX disables 64-bit types by default; float32 is what every accelerator runs
  fast, and the difference is far below the loss's own noise. Enable x64
  (JAX_ENABLE_X64=1) to reproduce the reference bit for bit.
  """
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _stablemax_s(x: Array) -> Array:
  """s(x) = 1/(1-x) for x < 0, x + 1 otherwise: positive, grows linearly.

  The 1/(1-x) branch is evaluated on min(x, 0) only. Written naively, at a logit
  of exactly 1.0 that branch is 1/1e-30 with gradient (1e30)^2 = inf in float32,
  and `where` turns 0 * inf into a NaN gradient although the loss is finite; the
  reference escapes this only because it computes in float64.
  """
  negative = x < 0
  x_neg = jnp.where(negative, x, 0.0)
  return jnp.where(negative, 1.0 / (1.0 - x_neg + 1e-30), x + 1.0)


def log_stablemax(logits: Array) -> Array:
  s = _stablemax_s(logits)
  return jnp.log(s / jnp.sum(s, axis=-1, keepdims=True))


def stablemax_cross_entropy(logits_BxSxV: Array, labels_BxS: Array) -> Array:
  """Per-token loss [B,S]; 0 where the label is ignored."""
  logprobs = log_stablemax(logits_BxSxV.astype(stablemax_dtype()))
  valid_BxS = labels_BxS != IGNORE_LABEL_ID
  safe_labels = jnp.where(valid_BxS, labels_BxS, 0)
  picked_BxS = jnp.take_along_axis(logprobs, safe_labels[..., None], axis=-1)[..., 0]
  return -jnp.where(valid_BxS, picked_BxS, 0.0)


def softmax_cross_entropy(logits_BxSxV: Array, labels_BxS: Array) -> Array:
  """Per-token softmax CE in float32 [B,S]; 0 where the label is ignored."""
  valid_BxS = labels_BxS != IGNORE_LABEL_ID
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxSxV.astype(jnp.float32), jnp.where(valid_BxS, labels_BxS, 0))
  return jnp.where(valid_BxS, loss, 0.0)


TOKEN_LOSSES = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


def sigmoid_bce_sum(logits_B: Array, targets_B: Array) -> Array:
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits_B, targets_B))


def act_loss(outputs: dict[str, Array], carry: ACTCarry,
             loss_type: str = "stablemax_cross_entropy"):
  """Loss summed over the batch, and metric sums (reference `ACTLossHead`).

  Args:
    outputs: from `act_step`.
    carry: the carry *after* the step (its labels, steps and halted flags).
    loss_type: key of TOKEN_LOSSES.

  Returns:
    (loss, metrics) where metrics holds float32 sums: count, accuracy,
    exact_accuracy, q_halt_accuracy, steps, lm_loss, q_halt_loss and, when
    training, q_continue_loss.
  """
  if loss_type not in TOKEN_LOSSES:
    raise ValueError(f"loss_type={loss_type!r}; choose one of {sorted(TOKEN_LOSSES)}.")
  labels_BxS = carry.labels_BxS
  logits_BxSxV = outputs["logits"]
  q_halt_B = outputs["q_halt_logits"]

  mask_BxS = labels_BxS != IGNORE_LABEL_ID
  counts_B = jnp.sum(mask_BxS, axis=-1)
  divisor_B = jnp.maximum(counts_B, 1)
  correct_BxS = mask_BxS & (jnp.argmax(logits_BxSxV, axis=-1) == labels_BxS)
  seq_correct_B = jnp.sum(correct_BxS, axis=-1) == counts_B

  token_loss_BxS = TOKEN_LOSSES[loss_type](logits_BxSxV, labels_BxS)
  lm_loss = jnp.sum(jnp.sum(token_loss_BxS, axis=-1) / divisor_B)
  q_halt_loss = sigmoid_bce_sum(q_halt_B, seq_correct_B.astype(q_halt_B.dtype))
  loss = lm_loss + 0.5 * q_halt_loss
  if "target_q_continue" in outputs:
    q_continue_loss = sigmoid_bce_sum(outputs["q_continue_logits"],
                                      outputs["target_q_continue"])
    loss = loss + 0.5 * q_continue_loss
  else:
    q_continue_loss = None

  valid_B = carry.halted_B & (counts_B > 0)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  metrics = {
      "count": f32(jnp.sum(valid_B)),
      "accuracy": f32(jnp.sum(jnp.where(
          valid_B, jnp.sum(correct_BxS, -1) / divisor_B, 0.0))),
      "exact_accuracy": f32(jnp.sum(valid_B & seq_correct_B)),
      "q_halt_accuracy": f32(jnp.sum(valid_B & ((q_halt_B >= 0) == seq_correct_B))),
      "steps": f32(jnp.sum(jnp.where(valid_B, carry.steps_B, 0))),
      "lm_loss": f32(jax.lax.stop_gradient(lm_loss)),
      "q_halt_loss": f32(jax.lax.stop_gradient(q_halt_loss)),
  }
  if q_continue_loss is not None:
    metrics["q_continue_loss"] = f32(jax.lax.stop_gradient(q_continue_loss))
  return loss, metrics
