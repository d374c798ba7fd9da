"""Adaptive computation time around one segment (HRM spec §2, TRM spec §2).

One call of `act_step` is one deep-supervision segment for every row of a
persistent batch. The carry outlives the batch: rows that halted at the previous
step are reset to the fixed initial states and take the row of the freshly loaded
batch at the same index; the other rows keep their example and continue where
they stopped. All functions are pure and jit-friendly.

The segment comes from the model's family (`models.family_of`) and the halting
rule from its config's `act_rules` (`models.ACTRules`): HRM halts on
q_halt > q_continue and bootstraps a Q-continue target with a second segment;
TRM (`no_ACT_continue`) halts on q_halt > 0 with no target; the transformer
baseline halts on q_halt > q_continue (`act_enabled`) with no target. The
carry always holds z_H and z_L [B, L, D] (the baseline carries its unused z_L
unchanged) so that every family shares one carry layout.
"""
# pylint: disable=invalid-name
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from hrm_jax import models
from hrm_jax.data.puzzles import IGNORE_LABEL_ID

Array = jax.Array


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


def initial_carry(config: Any, batch_size: int) -> ACTCarry:
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


def initial_states(model: Any, variables: Any) -> tuple[Array, Array]:
  """(H_init [D], L_init [D]): the fixed states halted rows restart from (the
  transformer baseline, which has no L state, gives zeros for it)."""
  return model.apply(variables, method=type(model).initial_states)


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


def q_says_halt(rules: Any, q_halt_B: Array, q_continue_B: Array) -> Array:
  """bool [B]: the family's Q rule (`models.ACTRules`) says halt, without gradient."""
  if rules.halt_on_q_halt_alone:
    return jax.lax.stop_gradient(q_halt_B > 0)  # sigmoid(q_halt) > 0.5
  return jax.lax.stop_gradient(q_halt_B > q_continue_B)


NOISE_PLACES = ("both", "z_L", "init")


def act_step(model: Any, variables: Any, carry: ACTCarry,
             puzzle_rows_BxE: Array, rng: Array | None, *, training: bool,
             adaptive_halting: bool = False,
             halt_max_steps: int | None = None) -> tuple[ACTCarry, dict[str, Array]]:
  """Runs one segment on an already reset carry and decides which rows halt.

  Args:
    model: the inner model (any family: its `segment` is looked up).
    variables: {"params", "buffers"}.
    carry: the carry after `reset_halted`.
    puzzle_rows_BxE: puzzle-embedding rows of `carry.puzzle_identifiers_B`.
    rng: key for exploration (training only).
    training: Q-based halting with exploration and the Q-continue target.
    adaptive_halting: at evaluation, also halt rows whose Q head says so.
    halt_max_steps: overrides config.halt_max_steps (inference-time scaling).

  Halting follows `model.config.act_rules` (always at halt_max_steps;
  "training" means training with halt_max_steps > 1, where exploration
  applies too): the Q rule (q_halt > q_continue, or q_halt > 0 alone) decides
  in training when `train_halting`, and at evaluation when `adaptive_halting`
  or the family's `eval_halting`; `q_continue_target` adds the bootstrapped
  target from a second, gradient-free segment.

  Returns:
    (new carry, outputs): logits [B,S,V], q_halt_logits [B], q_continue_logits [B]
    and, with a Q-continue target when training, target_q_continue [B].
  """
  cfg = model.config
  rules = cfg.act_rules
  segment = models.family_of(cfg).segment
  M = cfg.halt_max_steps if halt_max_steps is None else halt_max_steps
  (z_H, z_L), logits_BxSxV, q_halt_B, q_continue_B = segment(
      model, variables, carry.z_H_BxLxD, carry.z_L_BxLxD, carry.inputs_BxS,
      puzzle_rows_BxE)
  outputs = {"logits": logits_BxSxV, "q_halt_logits": q_halt_B,
             "q_continue_logits": q_continue_B}

  steps_B = carry.steps_B + 1
  is_last_B = steps_B >= M
  halted_B = is_last_B
  q_says_halt_B = q_says_halt(rules, q_halt_B, q_continue_B)
  if training and M > 1 and rules.train_halting:
    halted_B = halted_B | q_says_halt_B
    # Exploration: with probability p a row must run at least U{2..M} segments.
    explore_key, min_steps_key = jax.random.split(rng)
    B = steps_B.shape[0]
    explore_B = jax.random.uniform(explore_key, (B,)) < cfg.halt_exploration_prob
    min_steps_B = jnp.where(
        explore_B, jax.random.randint(min_steps_key, (B,), 2, M + 1), 0)
    halted_B = halted_B & (steps_B >= min_steps_B)
    if rules.q_continue_target:
      # Q-continue target: Q values of the next segment from the new carry, same
      # data, no gradient (no replay buffer, no target network: PQN-style).
      frozen_vars, frozen_rows = jax.lax.stop_gradient((variables, puzzle_rows_BxE))
      _, _, next_q_halt_B, next_q_continue_B = segment(
          model, frozen_vars, z_H, z_L, carry.inputs_BxS, frozen_rows)
      target_B = jax.nn.sigmoid(jnp.where(
          is_last_B, next_q_halt_B, jnp.maximum(next_q_halt_B, next_q_continue_B)))
      outputs["target_q_continue"] = jax.lax.stop_gradient(target_B)
  elif not training and (adaptive_halting or rules.eval_halting):
    halted_B = halted_B | q_says_halt_B

  new_carry = carry.replace(z_H_BxLxD=z_H, z_L_BxLxD=z_L, steps_B=steps_B,
                            halted_B=halted_B)
  return new_carry, outputs


def rollout(model: Any, variables: Any, puzzle_emb_PxE: Array, batch: dict[str, Array], *,
            halt_max_steps: int, adaptive_halting: bool = False,
            keep_trajectory: bool = False, num_samples: int = 1,
            latent_noise: float = 0.0, rng: Array | None = None,
            noise_on: str = "both", track_halt: bool = False):
  """Runs a fresh carry over one batch to the end (reference `pretrain.evaluate`).

  Every row runs `halt_max_steps` segments (inference-time scaling: may exceed
  the training value), or, with `adaptive_halting`, stops when its Q head says
  halt; rows that finished keep their state, outputs and step count.

  Sampled trajectories (test-time compute, `hrm_jax.sampling` chooses among
  them): with `num_samples` K > 1 every row is run K times inside this one
  computation (the batch is tiled to B*K rows, row b's samples at b*K .. b*K+K-1,
  so a batch sharded over devices stays local), and with `latent_noise` sigma > 0
  Gaussian noise N(0, sigma^2) is added to z_H and z_L of every row before every
  segment (the first included), drawn from `rng` folded with the segment index
  (Probabilistic TRM injects it into the latent at each deep-recursion step).
  `noise_on` places it: "both" (z_H and z_L before every segment), "z_L" (z_L
  alone before every segment, PTRM's latent) or "init" (both states once, before
  the first segment: random initial latents, as C-voting).
  The carry's states are RMS-normalised (RMS ~1 per position), so sigma is
  relative to their scale. With K = 1 and sigma = 0 this is the plain rollout,
  bit for bit.

  Args:
    model: the inner model.
    variables: {"params", "buffers"}.
    puzzle_emb_PxE: the puzzle-embedding table.
    batch: inputs [B,S], labels [B,S] (IGNORE_LABEL_ID ignored), puzzle_identifiers [B].
    halt_max_steps: segments to run at most.
    adaptive_halting: halt rows by the Q head.
    keep_trajectory: also return the argmax prediction after every segment.
    num_samples: trajectories per row (K).
    latent_noise: standard deviation of the noise on the carry (sigma).
    rng: the noise key (needed when latent_noise > 0).
    noise_on: where the noise goes (NOISE_PLACES).
    track_halt: also return `q_halt_step` (the "first_halt" rule's input).

  Returns:
    (carry with every row marked halted, outputs of each row's last segment
     (with `track_halt`, plus `q_halt_step` [N] int32: the first segment after
     which the family's Q rule said halt, halt_max_steps + 1 if it never did),
     trajectory [M,N,S] int32 or None), N = B*K rows.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples}: use >= 1.")
  if noise_on not in NOISE_PLACES:
    raise ValueError(f"noise_on={noise_on!r}: use one of {list(NOISE_PLACES)}.")
  noisy = latent_noise > 0
  if noisy and rng is None:
    raise ValueError("latent_noise > 0 needs a key: pass rng=jax.random.key(seed).")
  if num_samples > 1:
    batch = jax.tree.map(lambda x: jnp.repeat(x, num_samples, axis=0), batch)
  cfg = model.config
  B = batch["inputs"].shape[0]
  carry = reset_halted(initial_carry(cfg, B), batch, *initial_states(model, variables))
  rows_BxE = puzzle_emb_PxE[carry.puzzle_identifiers_B]
  step = functools.partial(act_step, model, variables, rng=None, training=False,
                           adaptive_halting=adaptive_halting,
                           halt_max_steps=halt_max_steps)

  def perturb(carry, segment):
    """The carry a segment starts from: + sigma * N(0, 1) where `noise_on` says
    (segment None: the first segment of an "init" rollout)."""
    if not noisy or (noise_on == "init" and segment is not None):
      return carry
    key_H, key_L = jax.random.split(jax.random.fold_in(rng, 0 if segment is None else segment))

    def add(key, z):
      noise = latent_noise * jax.random.normal(key, z.shape, jnp.float32)
      return (z.astype(jnp.float32) + noise).astype(z.dtype)

    z_H = carry.z_H_BxLxD if noise_on == "z_L" else add(key_H, carry.z_H_BxLxD)
    return carry.replace(z_H_BxLxD=z_H, z_L_BxLxD=add(key_L, carry.z_L_BxLxD))

  never = jnp.int32(halt_max_steps + 1)

  def first_halt(halt_step_B, outputs, segment_number_B):
    """The Q rule's first halt so far (segment numbers count from 1)."""
    says_B = q_says_halt(cfg.act_rules, outputs["q_halt_logits"],
                         outputs["q_continue_logits"])
    return jnp.where((halt_step_B == never) & says_B, segment_number_B, halt_step_B)

  def segment_body(loop, segment):
    carry, outputs, done_B, halt_step_B = loop
    new_carry, new_outputs = step(perturb(carry, segment), rows_BxE)
    # Rows that finished earlier keep their state and outputs.
    keep = lambda new, old: jnp.where(done_B.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)
    new_carry = jax.tree.map(keep, new_carry, carry)
    new_outputs = jax.tree.map(keep, new_outputs, outputs)
    halt_step_B = first_halt(halt_step_B, new_outputs, new_carry.steps_B)
    done_B = done_B | new_carry.halted_B
    prediction_BxS = jnp.argmax(new_outputs["logits"], axis=-1).astype(jnp.int32)
    return ((new_carry, new_outputs, done_B, halt_step_B),
            (prediction_BxS if keep_trajectory else None))

  # The first segment outside the loop fixes the output shapes and dtypes.
  carry, outputs = step(perturb(carry, None if noise_on == "init" else 0), rows_BxE)
  halt_step_B = first_halt(jnp.full(carry.steps_B.shape, never), outputs, carry.steps_B)
  first_prediction = jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)
  # The segment index only feeds the noise; without noise the loop is unchanged.
  segments = jnp.arange(1, halt_max_steps, dtype=jnp.int32) if noisy else None
  (carry, outputs, _, halt_step_B), trajectory = jax.lax.scan(
      segment_body, (carry, outputs, carry.halted_B, halt_step_B), segments,
      length=halt_max_steps - 1)
  if track_halt:
    outputs = dict(outputs, q_halt_step=halt_step_B)
  # Every row is finished now; count them all as halted for the metrics.
  carry = carry.replace(halted_B=jnp.ones_like(carry.halted_B))
  if keep_trajectory:
    trajectory = jnp.concatenate([first_prediction[None], trajectory], 0)
  return carry, outputs, trajectory
