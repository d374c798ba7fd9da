"""The jittable train and eval steps (pure functions; `train.py` jits them).

train_step(state, carry, batch, rng) -> (state, carry, metric sums)
  = one deep-supervision segment for every row of the persistent batch, one
  AdamATan2 update of the dense weights and one sparse SignSGD update of the
  puzzle-embedding rows in the batch (reference `pretrain.train_batch`).

eval_step(state, batch) -> (metric sums, per-row outputs)
  = a fresh carry, `halt_max_steps` segments (or fewer per row with adaptive
  halting), metrics from the last segment (reference `pretrain.evaluate`).
"""
# pylint: disable=invalid-name
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from hrm_jax import losses, optim
from hrm_jax.models import act, hrm
from hrm_jax.state import TrainState

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step (hashable, so it can be a jit static)."""
  global_batch_size: int
  puzzle_emb_weight_decay: float


def _variables(state: TrainState, params=None) -> dict[str, Any]:
  return {"params": state.params if params is None else params, "buffers": state.buffers}


def train_step(state: TrainState, carry: act.ACTCarry, batch: dict[str, Array],
               rng: Array, *, model: hrm.HRMInner, dense_tx: optax.GradientTransformation,
               dense_lr_fn: optax.Schedule, puzzle_emb_lr_fn: optax.Schedule,
               step_config: StepConfig):
  """One optimizer update on one ACT segment. See the module docstring."""
  rng = jax.random.fold_in(rng, state.step)
  carry = act.reset_halted(carry, batch, state.buffers["H_init"], state.buffers["L_init"])
  ids_B = carry.puzzle_identifiers_B
  rows_BxE = state.puzzle_emb[ids_B]

  def loss_fn(params, rows_BxE):
    new_carry, outputs = act.act_step(model, _variables(state, params), carry, rows_BxE,
                                      rng, training=True)
    loss_sum, metric_sums = losses.act_loss(outputs, new_carry, model.config.loss_type)
    # Sum over rows / global batch: the mean the reference's all-reduce(SUM) of
    # `loss / global_batch_size` gives, independent of the device count.
    return loss_sum / step_config.global_batch_size, (new_carry, metric_sums)

  (loss, (new_carry, metric_sums)), (param_grads, row_grads_BxE) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.params, rows_BxE)

  updates, opt_state = dense_tx.update(param_grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  emb_lr = puzzle_emb_lr_fn(state.step)
  puzzle_emb = optim.sign_sgd_sparse_update(
      state.puzzle_emb, ids_B, row_grads_BxE, emb_lr,
      step_config.puzzle_emb_weight_decay)
  new_state = state.replace(step=state.step + 1, params=params, puzzle_emb=puzzle_emb,
                            opt_state=opt_state)
  metric_sums = dict(metric_sums, loss=loss * step_config.global_batch_size,
                     grad_norm=optax.tree.norm((param_grads, row_grads_BxE)),
                     lr=jnp.asarray(dense_lr_fn(state.step), jnp.float32),
                     puzzle_emb_lr=jnp.asarray(emb_lr, jnp.float32))
  return new_state, new_carry, metric_sums


def make_train_step(model: hrm.HRMInner, opt_cfg, total_steps: int,
                    global_batch_size: int):
  """Returns (step_fn, dense_tx) with the optimizers of `config.opt` bound."""
  dense_tx, puzzle_emb_lr_fn = optim.build_optimizers(opt_cfg, total_steps)
  # The same schedule the dense optimizer uses inside, for logging only.
  dense_lr_fn = optim.lr_schedule(opt_cfg.lr, opt_cfg.lr_warmup_steps, total_steps,
                                  opt_cfg.lr_min_ratio)
  step_config = StepConfig(global_batch_size, float(opt_cfg.puzzle_emb_weight_decay))
  step_fn = functools.partial(train_step, model=model, dense_tx=dense_tx,
                              dense_lr_fn=dense_lr_fn, puzzle_emb_lr_fn=puzzle_emb_lr_fn, step_config=step_config)
  return step_fn, dense_tx


def eval_step(state: TrainState, batch: dict[str, Array], *, model: hrm.HRMInner,
              halt_max_steps: int, adaptive_halting: bool = False,
              keep_trajectory: bool = False):
  """Runs a fresh carry to the end on one batch.

  Args:
    state: the train state.
    batch: inputs [B,S], labels [B,S] (-100 ignored), puzzle_identifiers [B].
    model: the inner model.
    halt_max_steps: segments to run (inference-time scaling: may exceed the
      training value).
    adaptive_halting: rows stop when their Q head says halt (q_halt > q_continue);
      their outputs and step counts are frozen from then on.
    keep_trajectory: also return the argmax prediction after every segment.

  Returns:
    (metric sums as in `losses.act_loss` with every row counted as halted,
     outputs: predictions [B,S] int32, q_halt_logits [B], steps [B] and, with
     keep_trajectory, trajectory [M,B,S] int32).
  """
  cfg = model.config
  B = batch["inputs"].shape[0]
  carry = act.reset_halted(act.initial_carry(cfg, B), batch, state.buffers["H_init"],
                           state.buffers["L_init"])
  rows_BxE = state.puzzle_emb[carry.puzzle_identifiers_B]
  variables = _variables(state)

  def segment_body(loop, _):
    carry, outputs, done_B = loop
    new_carry, new_outputs = act.act_step(
        model, variables, carry, rows_BxE, None, training=False,
        adaptive_halting=adaptive_halting, halt_max_steps=halt_max_steps)
    # Rows that finished earlier keep their state and outputs.
    keep = lambda new, old: jnp.where(done_B.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)
    new_carry = jax.tree.map(keep, new_carry, carry)
    new_outputs = jax.tree.map(keep, new_outputs, outputs)
    done_B = done_B | new_carry.halted_B
    prediction_BxS = jnp.argmax(new_outputs["logits"], axis=-1).astype(jnp.int32)
    return (new_carry, new_outputs, done_B), (prediction_BxS if keep_trajectory else None)

  # The first segment outside the loop fixes the output shapes and dtypes.
  carry, outputs = act.act_step(model, variables, carry, rows_BxE, None, training=False,
                                adaptive_halting=adaptive_halting,
                                halt_max_steps=halt_max_steps)
  first_prediction = jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)
  (carry, outputs, _), trajectory = jax.lax.scan(
      segment_body, (carry, outputs, carry.halted_B), length=halt_max_steps - 1)
  # Every row is finished now; count them all as halted for the metrics.
  carry = carry.replace(halted_B=jnp.ones_like(carry.halted_B))
  loss_sum, metric_sums = losses.act_loss(outputs, carry, cfg.loss_type)
  metric_sums = dict(metric_sums, loss=loss_sum)
  row_outputs = {
      "predictions": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32),
      "q_halt_logits": outputs["q_halt_logits"],
      "steps": carry.steps_B,
  }
  if keep_trajectory:
    row_outputs["trajectory"] = jnp.concatenate([first_prediction[None], trajectory], 0)
  return metric_sums, row_outputs


def reduce_train_metrics(sums: dict[str, float], num_steps: int,
                         global_batch_size: int) -> dict[str, float]:
  """Reference reduction: losses / global batch, the rest / halted count.

  `sums` are added over `num_steps` steps; lr values are averaged.
  """
  count = max(sums.get("count", 0.0), 1.0)
  out = {}
  for key, value in sums.items():
    if key.endswith("loss"):
      out[key] = value / (global_batch_size * num_steps)
    elif key in ("lr", "puzzle_emb_lr", "grad_norm"):
      out[key] = value / num_steps
    elif key == "count":
      out["halted_per_step"] = value / num_steps
    else:
      out[key] = value / count
  return out


def reduce_eval_metrics(sums: dict[str, float]) -> dict[str, float]:
  """Reference evaluation reduction: every key / count (rows with labels)."""
  count = max(sums.get("count", 0.0), 1.0)
  return {key: (value if key == "count" else value / count) for key, value in sums.items()}
