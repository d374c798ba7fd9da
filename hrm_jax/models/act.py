"""Adaptive computation time around one segment (HRM spec §2, TRM spec §2).

One call of `act_step` is one deep-supervision segment for every row of a
persistent batch. The carry outlives the batch: rows that halted at the previous
step are reset to the fixed initial states and take the row of the freshly loaded
batch at the same index; the other rows keep their example and continue where
they stopped. All functions are pure and jit-friendly.

The segment and the halting rule depend on the model family (see `act_step`):
HRM halts on q_halt > q_continue and bootstraps a Q-continue target with a
second segment; TRM (`no_ACT_continue`) halts on q_halt > 0 with no target;
the transformer baseline halts on q_halt > q_continue (`act_enabled`) with no
target. The carry always holds z_H and z_L [B, L, D] (the baseline carries its
unused z_L unchanged) so that every family shares one carry layout.
"""
# pylint: disable=invalid-name
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from hrm_jax.models import hrm, transformer, trm

Array = jax.Array
IGNORE_LABEL_ID = -100

# The segment function of each inner-model class (all share hrm.segment's signature).
_SEGMENTS = {
    hrm.HRMInner: hrm.segment,
    trm.TRMInner: trm.segment,
    transformer.TransformerInner: transformer.segment,
}


def _segment_fn(model):
  for cls, fn in _SEGMENTS.items():
    if isinstance(model, cls):
      return fn
  raise TypeError(f"act_step: no segment function for {type(model).__name__}; known: "
                  f"{[c.__name__ for c in _SEGMENTS]}.")


@flax.struct.dataclass
class ACTCarry:
  """Per-row recurrent state that persists across training steps."""
  z_H_BxLxD: Array
  z_L_BxLxD: Array
  steps_B: Array  # int32: segments run on the current example
  halted_B: Array  # bool: the row takes a fresh example at the next step
  inputs_BxS: Array  # int32: the example each row is working on
  labels_BxS: Array  # int32, IGNORE_LABEL_ID where not supervised
  puzzle_identifiers_B: Array  # int32


def initial_carry(config: hrm.HRMConfig, batch_size: int) -> ACTCarry:
  """All rows halted, so the first step loads the whole batch and resets states."""
  B, L, D, S = batch_size, config.num_positions, config.hidden_size, config.seq_len
  return ACTCarry(
      z_H_BxLxD=jnp.zeros((B, L, D), config.dtype),
      z_L_BxLxD=jnp.zeros((B, L, D), config.dtype),
      steps_B=jnp.zeros((B,), jnp.int32),
      halted_B=jnp.ones((B,), jnp.bool_),
      inputs_BxS=jnp.zeros((B, S), jnp.int32),
      labels_BxS=jnp.full((B, S), IGNORE_LABEL_ID, jnp.int32),
      puzzle_identifiers_B=jnp.zeros((B,), jnp.int32),
  )


def reset_halted(carry: ACTCarry, batch: dict[str, Array], H_init_D: Array,
                 L_init_D: Array) -> ACTCarry:
  """Halted rows: states back to H_init/L_init, step count 0, fresh batch row."""
  halted_B = carry.halted_B

  def pick(fresh, old):
    mask = halted_B.reshape((-1,) + (1,) * (old.ndim - 1))
    return jnp.where(mask, fresh.astype(old.dtype), old)

  return ACTCarry(
      z_H_BxLxD=pick(jnp.broadcast_to(H_init_D, carry.z_H_BxLxD.shape), carry.z_H_BxLxD),
      z_L_BxLxD=pick(jnp.broadcast_to(L_init_D, carry.z_L_BxLxD.shape), carry.z_L_BxLxD),
      steps_B=jnp.where(halted_B, 0, carry.steps_B),
      halted_B=halted_B,
      inputs_BxS=pick(batch["inputs"], carry.inputs_BxS),
      labels_BxS=pick(batch["labels"], carry.labels_BxS),
      puzzle_identifiers_B=pick(batch["puzzle_identifiers"], carry.puzzle_identifiers_B),
  )


def act_step(model: hrm.HRMInner, variables: Any, carry: ACTCarry,
             puzzle_rows_BxE: Array, rng: Array | None, *, training: bool,
             adaptive_halting: bool = False,
             halt_max_steps: int | None = None) -> tuple[ACTCarry, dict[str, Array]]:
  """Runs one segment on an already reset carry and decides which rows halt.

  Args:
    model: the inner model.
    variables: {"params", "buffers"}.
    carry: the carry after `reset_halted`.
    puzzle_rows_BxE: puzzle-embedding rows of `carry.puzzle_identifiers_B`.
    rng: key for exploration (training only).
    training: Q-based halting with exploration and the Q-continue target.
    adaptive_halting: at evaluation, also halt rows whose Q head says so.
    halt_max_steps: overrides config.halt_max_steps (inference-time scaling).

  Halting by family (always at halt_max_steps; "training" means training with
  halt_max_steps > 1, where exploration applies too):
    HRM: q_halt > q_continue in training, and when `adaptive_halting`; the
      Q-continue target comes from a second, gradient-free segment.
    TRM (`config.no_ACT_continue`): q_halt > 0 in training and when
      `adaptive_halting`; no target pass.
    Transformer baseline (`config.act_enabled` exists): q_halt > q_continue in
      training only if `act_enabled` (else no Q halting and no exploration), at
      evaluation if `act_inference` or `adaptive_halting`; no target pass.

  Returns:
    (new carry, outputs): logits [B,S,V], q_halt_logits [B], q_continue_logits [B]
    and, for HRM when training with halt_max_steps > 1, target_q_continue [B].
  """
  cfg = model.config
  M = cfg.halt_max_steps if halt_max_steps is None else halt_max_steps
  segment = _segment_fn(model)
  (z_H, z_L), logits_BxSxV, q_halt_B, q_continue_B = segment(
      model, variables, carry.z_H_BxLxD, carry.z_L_BxLxD, carry.inputs_BxS,
      puzzle_rows_BxE)
  outputs = {"logits": logits_BxSxV, "q_halt_logits": q_halt_B,
             "q_continue_logits": q_continue_B}

  halt_only = getattr(cfg, "no_ACT_continue", False)
  is_baseline = hasattr(cfg, "act_enabled")
  # Q-continue target pass: HRM (and a TRM asked for it) only.
  bootstrap = not (halt_only or is_baseline)
  train_q_halting = getattr(cfg, "act_enabled", True)
  if is_baseline and not training:
    adaptive_halting = adaptive_halting or cfg.act_inference

  steps_B = carry.steps_B + 1
  is_last_B = steps_B >= M
  halted_B = is_last_B
  if halt_only:
    # TRM: sigmoid(q_halt) > 0.5; the continue logit is ignored.
    q_says_halt_B = jax.lax.stop_gradient(q_halt_B > 0)
  else:
    q_says_halt_B = jax.lax.stop_gradient(q_halt_B > q_continue_B)
  if training and M > 1 and train_q_halting:
    halted_B = halted_B | q_says_halt_B
    # Exploration: with probability p a row must run at least U{2..M} segments.
    explore_key, min_steps_key = jax.random.split(rng)
    B = steps_B.shape[0]
    explore_B = jax.random.uniform(explore_key, (B,)) < cfg.halt_exploration_prob
    min_steps_B = jnp.where(
        explore_B, jax.random.randint(min_steps_key, (B,), 2, M + 1), 0)
    halted_B = halted_B & (steps_B >= min_steps_B)
    if bootstrap:
      # Q-continue target: Q values of the next segment from the new carry, same
      # data, no gradient (no replay buffer, no target network: PQN-style).
      frozen_vars, frozen_rows = jax.lax.stop_gradient((variables, puzzle_rows_BxE))
      _, _, next_q_halt_B, next_q_continue_B = segment(
          model, frozen_vars, z_H, z_L, carry.inputs_BxS, frozen_rows)
      target_B = jax.nn.sigmoid(jnp.where(
          is_last_B, next_q_halt_B, jnp.maximum(next_q_halt_B, next_q_continue_B)))
      outputs["target_q_continue"] = jax.lax.stop_gradient(target_B)
  elif adaptive_halting:
    halted_B = halted_B | q_says_halt_B

  new_carry = carry.replace(z_H_BxLxD=z_H, z_L_BxLxD=z_L, steps_B=steps_B,
                            halted_B=halted_B)
  return new_carry, outputs
