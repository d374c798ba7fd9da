"""Optimisers of HRM: AdamATan2, the LR schedule and sparse SignSGD.

This module owns everything that turns gradients into parameter changes
(spec §4):

* `lr_schedule`: linear warm-up then cosine decay to `min_ratio` (with the
  default `min_ratio=1.0`: warm-up then constant), shared by both optimisers.
* `adam_atan2`: the optimiser of every dense parameter. Optax has no built-in,
  and the reference package's formula (no epsilon, no a/b scale constants, the
  beta1 bias correction outside the atan2) is easy to get subtly wrong.
* `sign_sgd_sparse_update`: the optimiser of the puzzle-embedding table, which
  only touches the rows whose ids are in the batch. ARC's table has ~1M rows,
  so a dense [P, E] gradient or Adam state would be the largest tensors of the
  whole run; the reference uses SignSGD on the rows seen ("Adam ≈ SignSGD if
  the gradient is very sparse") and so do we.
* `build_optimizers`: both of the above from `config.opt` (`Optimizers`;
  `freeze_weights` leaves the dense weights alone).
* `ema_update`: TRM's exponential moving average of the weights (spec §4.4).

Step convention: optax passes schedules the 0-based number of updates applied
so far (`count`). The reference increments its step *before* the update, so
its first update uses step 1. Everything here maps count c to reference step
c + 1 so the two agree update for update.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


def lr_schedule(base_lr: float,
                warmup_steps: int,
                total_steps: int,
                min_ratio: float = 1.0) -> optax.Schedule:
  """The reference `cosine_schedule_with_warmup_lr_lambda`, as optax schedule.

  With reference step s = count + 1 and W = warmup_steps:
    s < W:  base * s / W
    else:   base * (r + max(0, (1 - r) * 0.5 * (1 + cos(pi * progress)))),
            progress = (s - W) / max(1, total_steps - W).
  The `max(1, ...)` denominators are the reference's, so `warmup_steps=0`
  (no warm-up: the cosine starts at step 1) and `total_steps <= warmup_steps`
  (warm-up to base at step W, then base * r from step W + 1) are well
  defined.

  One deliberate deviation: progress is clipped to 1, so steps past
  `total_steps` hold the final LR instead of climbing back up the cosine. The
  reference never trains past `total_steps`, so the two agree on every step
  it takes.

  Args:
    base_lr: peak learning rate.
    warmup_steps: length of the linear warm-up, in updates.
    total_steps: updates in the whole run; the cosine ends here.
    min_ratio: final LR as a fraction of `base_lr` (1.0 = constant after
      warm-up, the reference default).

  Returns:
    A function of the 0-based optax count, traceable under jit.
  """
  warmup = float(max(1, warmup_steps))
  decay_len = float(max(1, total_steps - warmup_steps))

  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0  # Reference step, from 1.
    warm = base_lr * step / warmup
    progress = jnp.clip((step - warmup_steps) / decay_len, 0.0, 1.0)
    cosine = jnp.maximum(
        0.0, (1.0 - min_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    decayed = base_lr * (min_ratio + cosine)
    return jnp.where(step < warmup_steps, warm, decayed).astype(jnp.float32)

  return schedule


class AdamATan2State(NamedTuple):
  """fp32 optimiser state: updates applied so far and both moments."""
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def adam_atan2(learning_rate: float | optax.Schedule,
               b1: float = 0.9,
               b2: float = 0.95,
               weight_decay: float = 0.0) -> optax.GradientTransformation:
  """AdamATan2 exactly as the reference `adam-atan2` package (spec §4.1).

  Per update t (from 1), with lr = learning_rate(t - 1):
    p <- p * (1 - lr * wd)                 # decoupled decay, on the old p
    m <- lerp(m, g, 1 - b1);  v <- lerp(v, g^2, 1 - b2)
    p <- p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))

  atan2 replaces Adam's m / (sqrt(v) + eps): it is bounded and scale
  invariant, so no epsilon is needed. The beta1 bias correction is outside the
  atan2 (the upstream repo reverted a commit moving it inside).

  Optax applies `p + update`, so the returned update is the difference
  between the new and the old parameters: -lr*wd*p - lr/(1-b1^t)*atan2(...).
  The decay only depends on the old p and the atan2 step not at all, so this
  is the reference's two-stage update up to one fp32 rounding.

  Moments and arithmetic are fp32 whatever the parameter dtype; updates are
  cast back to it.

  Args:
    learning_rate: a float or an optax schedule of the 0-based count.
    b1: first-moment decay.
    b2: second-moment decay.
    weight_decay: decoupled weight decay, multiplied by the LR.

  Returns:
    An optax transformation whose `update` needs `params`.
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)
    return AdamATan2State(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(zeros, params),
        nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    lr = (learning_rate(state.count) if callable(learning_rate)
          else learning_rate)
    lr = jnp.asarray(lr, jnp.float32)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    bias1 = 1.0 - jnp.float32(b1)**t
    bias2_sqrt = jnp.sqrt(1.0 - jnp.float32(b2)**t)

    def moments(g, m, v):
      g = g.astype(jnp.float32)
      # lerp(m, g, w) = m + w * (g - m), as torch.lerp computes it.
      return m + (1.0 - b1) * (g - m), v + (1.0 - b2) * (g * g - v)

    mu_nu = jax.tree.map(moments, updates, state.mu, state.nu)
    is_pair = lambda x: isinstance(x, tuple)
    mu = jax.tree.map(lambda x: x[0], mu_nu, is_leaf=is_pair)
    nu = jax.tree.map(lambda x: x[1], mu_nu, is_leaf=is_pair)

    def delta(p, m, v):
      decay = -lr * weight_decay * p.astype(jnp.float32)
      step = -(lr / bias1) * jnp.arctan2(m, jnp.sqrt(v) / bias2_sqrt)
      return (decay + step).astype(p.dtype)

    new_updates = jax.tree.map(delta, params, mu, nu)
    return new_updates, AdamATan2State(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def sign_sgd_sparse_update(table_PxE: jax.Array, ids_B: jax.Array,
                           row_grads_BxE: jax.Array, lr: jax.Array | float,
                           weight_decay: float) -> jax.Array:
  """SignSGD with decoupled decay on the puzzle-embedding rows seen (§4.3).

  For every id u present in `ids_B`:
    table[u] <- table[u] * (1 - lr * wd) - lr * sign(sum_{b: ids[b] = u} g[b])
  Rows whose id is absent are returned bit-identical (no decay), as in the
  reference, which only ever touches the rows of the batch.

  Only [B, E]-sized intermediates are built: the ids are deduplicated into a
  fixed-size vector (size B, padded with the out-of-range id P), row gradients
  are summed per unique id with `segment_sum`, the touched rows are gathered,
  updated and scattered back with the padding dropped. Shapes are static, so
  this jits, and under a donated table XLA updates the rows in place. With the
  table sharded over rows and ids/grads over the batch, XLA inserts the
  gathers and scatters across devices; the result equals the single-device
  one.

  Args:
    table_PxE: the embedding table [P, E].
    ids_B: integer row ids of the batch [B]; duplicates allowed.
    row_grads_BxE: gradient of the loss w.r.t. each gathered row [B, E].
    lr: learning rate of this update (scalar, may be traced).
    weight_decay: decoupled decay, multiplied by lr.

  Returns:
    The updated table, same shape and dtype.
  """
  num_rows = table_PxE.shape[0]
  batch = ids_B.shape[0]
  ids_B = ids_B.astype(jnp.int32)
  # unique_U is sorted, padded with num_rows (out of range); inverse_B maps
  # each batch row to its slot in unique_U.
  unique_U, inverse_B = jnp.unique(
      ids_B, size=batch, fill_value=num_rows, return_inverse=True)
  inverse_B = inverse_B.reshape(batch)
  grad_sum_UxE = jax.ops.segment_sum(
      row_grads_BxE.astype(jnp.float32), inverse_B, num_segments=batch)
  rows_UxE = table_PxE.at[unique_U].get(mode="fill", fill_value=0)
  lr = jnp.asarray(lr, jnp.float32)
  new_rows_UxE = (rows_UxE.astype(jnp.float32) * (1.0 - lr * weight_decay)
                  - lr * jnp.sign(grad_sum_UxE))
  return table_PxE.at[unique_U].set(
      new_rows_UxE.astype(table_PxE.dtype), mode="drop")


class Optimizers(NamedTuple):
  """Both optimisers of a run, built once from `config.opt`.

  Attributes:
    dense_tx: AdamATan2 over every dense parameter, on `dense_lr`.
    dense_lr: the schedule `dense_tx` uses (the same object, so the LR the
      trainer logs is the LR in use), of the 0-based update count.
    puzzle_emb_lr: the SignSGD schedule of the puzzle-embedding rows.
    puzzle_emb_weight_decay: SignSGD's decoupled decay.
  """
  dense_tx: optax.GradientTransformation
  dense_lr: optax.Schedule
  puzzle_emb_lr: optax.Schedule
  puzzle_emb_weight_decay: float


def build_optimizers(opt_cfg: ml_collections.ConfigDict, total_steps: int) -> Optimizers:
  """The dense optimiser and the puzzle-embedding update from `config.opt`.

  Both follow the same schedule shape with their own base LR, as in the
  reference. The embedding update itself is `sign_sgd_sparse_update`, applied
  by the train step with `puzzle_emb_lr(count)` for the same 0-based count the
  dense optimiser is at.

  With `freeze_weights` (TRM's option for fine-tuning on new puzzles) the
  dense optimiser is `optax.set_to_zero()`: every dense update is exactly 0
  (no Adam state, no weight decay), so the dense weights stay bit for bit, and
  `dense_lr` is 0 so the logged LR says so; only the puzzle embeddings train.

  Args:
    opt_cfg: fields lr, lr_min_ratio, lr_warmup_steps, beta1, beta2,
      weight_decay, puzzle_emb_lr, puzzle_emb_weight_decay and, optionally,
      freeze_weights.
    total_steps: updates in the whole run.
  """

  def schedule(base_lr):
    return lr_schedule(base_lr, opt_cfg.lr_warmup_steps, total_steps,
                       opt_cfg.lr_min_ratio)

  if opt_cfg.get("freeze_weights", False):
    dense_lr = lambda count: jnp.zeros([], jnp.float32)
    dense_tx = optax.set_to_zero()
  else:
    dense_lr = schedule(opt_cfg.lr)
    dense_tx = adam_atan2(dense_lr, b1=opt_cfg.beta1, b2=opt_cfg.beta2,
                          weight_decay=opt_cfg.weight_decay)
  return Optimizers(dense_tx, dense_lr, schedule(opt_cfg.puzzle_emb_lr),
                    float(opt_cfg.puzzle_emb_weight_decay))


def ema_update(shadow: optax.Params, params: optax.Params,
               rate: float) -> optax.Params:
  """One EMA step of the weights: rate * shadow + (1 - rate) * params, in float32.

  TRM's `EMAHelper` (spec §4.4, rate 0.999): the shadow starts as a copy of the
  initial weights and is updated after every optimiser step (both optimisers
  done); evaluation and checkpoints use it in place of the weights, with the
  live puzzle-embedding table (a buffer there, so never averaged; pass the
  dense params only). There is no bias correction or warm-up, unlike
  `optax.ema(debias=True)`: the early shadow stays close to the initial weights.

  Args:
    shadow: the previous shadow (a pytree like `params`).
    params: the weights after this step's update.
    rate: the decay (`ema_rate`), the weight of the old shadow.

  Returns:
    The new shadow, float32 leaves.
  """
  def step(s, p):
    return (rate * s.astype(jnp.float32)
            + (1.0 - rate) * p.astype(jnp.float32)).astype(jnp.float32)

  return jax.tree.map(step, shadow, params)
