"""The train and eval steps, and the one place they are compiled.

train_step(state, carry, batch, rng) -> (state, carry, metric sums)
  = one deep-supervision segment for every row of the persistent batch, one
  AdamATan2 update of the dense weights, one sparse SignSGD update of the
  puzzle-embedding rows in the batch (reference `pretrain.train_batch`) and,
  when the run keeps one, one EMA update of the weights.

eval_step(weights, batch, rng) -> (metric sums, per-row outputs)
  = a fresh carry run to the end (`act.rollout`), metrics from the last
  segment (reference `pretrain.evaluate`); with K sampled trajectories per row,
  those of the one `hrm_jax.sampling` chooses, plus every rule's accuracy.

`build_train_step` returns the jitted, sharded train step with its shardings
and abstract arguments: the trainer, the AOT compile check, the benchmarks and
the tests all run this one program, so none of them can drift from what
trains.
"""
# pylint: disable=invalid-name
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hrm_jax import losses, models, optim, sampling, sharding, state as state_lib
from hrm_jax.models import act

Array = jax.Array


def train_step(state: state_lib.TrainState, carry: act.ACTCarry, batch: dict[str, Array],
               rng: Array, *, model, optimizers: optim.Optimizers,
               global_batch_size: int, ema_rate: float = 0.0):
  """One optimizer update on one ACT segment. See the module docstring."""
  rng = jax.random.fold_in(rng, state.step)
  carry = act.reset_halted(carry, batch, *act.initial_states(
      model, {"params": state.params, "buffers": state.buffers}))
  ids_B = carry.puzzle_identifiers_B
  rows_BxE = state.puzzle_emb[ids_B]

  def loss_fn(params, rows_BxE):
    variables = {"params": params, "buffers": state.buffers}
    new_carry, outputs = act.act_step(model, variables, carry, rows_BxE, rng,
                                      training=True)
    loss_sum, metric_sums = losses.act_loss(outputs, new_carry, model.config.loss_type)
    # Sum over rows / global batch: the mean the reference's all-reduce(SUM) of
    # `loss / global_batch_size` gives, independent of the device count.
    return loss_sum / global_batch_size, (new_carry, metric_sums)

  (loss, (new_carry, metric_sums)), (param_grads, row_grads_BxE) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.params, rows_BxE)

  updates, opt_state = optimizers.dense_tx.update(param_grads, state.opt_state,
                                                  state.params)
  params = optax.apply_updates(state.params, updates)
  emb_lr = optimizers.puzzle_emb_lr(state.step)
  puzzle_emb = optim.sign_sgd_sparse_update(
      state.puzzle_emb, ids_B, row_grads_BxE, emb_lr, optimizers.puzzle_emb_weight_decay)
  ema = None if state.ema is None else optim.ema_update(state.ema, params, ema_rate)
  new_state = state.replace(step=state.step + 1, params=params, puzzle_emb=puzzle_emb,
                            opt_state=opt_state, ema=ema)
  metric_sums = dict(metric_sums, loss=loss * global_batch_size,
                     grad_norm=optax.tree.norm((param_grads, row_grads_BxE)),
                     param_norm=optax.tree.norm(params),
                     update_norm=optax.tree.norm(updates),
                     lr=jnp.asarray(optimizers.dense_lr(state.step), jnp.float32),
                     puzzle_emb_lr=jnp.asarray(emb_lr, jnp.float32))
  return new_state, new_carry, metric_sums


def eval_step(weights: state_lib.Weights, batch: dict[str, Array], rng: Array | None = None,
              *, model, halt_max_steps: int, adaptive_halting: bool = False,
              num_samples: int = 1, latent_noise: float = 0.0, select: str = "q_halt"):
  """Runs a fresh carry to the end on one batch.

  With `num_samples` K > 1 the rollout runs K (noisy, `latent_noise`, from
  `rng`) trajectories per row and `select` picks one (`hrm_jax.sampling`;
  "checker" needs the host's rule check, so here it takes the q_halt choice
  and the evaluator applies the checker to the rows). The metrics of
  `losses.act_loss` are those of the chosen sample; the sums of
  `sampling.sample_metric_sums` (every rule and the oracle) are added. With
  K = 1 the step is the plain evaluation (plus the noise, if any).

  Returns:
    (metric sums as in `losses.act_loss` with every row counted as halted,
     outputs: predictions [B,S] int32, q_halt_logits [B], steps [B] of the
     chosen sample and, when K > 1, sample_predictions [B,K,S] and
     sample_q_halt_logits [B,K]).
  """
  K = num_samples
  carry, outputs, _ = act.rollout(model, weights.variables(), weights.puzzle_emb, batch,
                                  halt_max_steps=halt_max_steps,
                                  adaptive_halting=adaptive_halting, num_samples=K,
                                  latent_noise=latent_noise, rng=rng)
  extra_sums, extra_rows = {}, {}
  if K > 1:
    predictions_BxKxS = sampling.split_samples(
        jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32), K)
    q_halt_BxK = sampling.split_samples(outputs["q_halt_logits"], K)
    choice_B, _ = sampling.choose(select, predictions_BxKxS, q_halt_BxK)
    rows_B = jnp.arange(choice_B.shape[0]) * K + choice_B  # into the B*K rows
    carry, outputs = jax.tree.map(lambda x: x[rows_B], (carry, outputs))
    extra_sums = sampling.sample_metric_sums(predictions_BxKxS, q_halt_BxK, batch["labels"])
    extra_rows = {"sample_predictions": predictions_BxKxS,
                  "sample_q_halt_logits": q_halt_BxK}
  loss_sum, metric_sums = losses.act_loss(outputs, carry, model.config.loss_type)
  row_outputs = {
      "predictions": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32),
      "q_halt_logits": outputs["q_halt_logits"],
      "steps": carry.steps_B,
      **extra_rows,
  }
  return dict(metric_sums, loss=loss_sum, **extra_sums), row_outputs


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """The compiled train step of a run and everything needed to call it.

  Attributes:
    model: the family's linen module.
    optimizers: the run's optimisers (their schedules are the ones logged).
    mesh: the device mesh.
    global_batch_size: rows per step over all processes.
    keep_ema: whether the state carries an EMA of the weights.
    step: the jitted `train_step` (state and carry donated).
    state_shardings / carry_shardings / batch_shardings / rng_sharding:
      where each argument lives.
    abstract_state / abstract_carry / abstract_batch: ShapeDtypeStructs with
      those shardings (orbax restore targets; the AOT compile check's inputs).
  """
  model: Any
  optimizers: optim.Optimizers
  mesh: Mesh
  global_batch_size: int
  keep_ema: bool
  step: Any
  state_shardings: Any
  carry_shardings: Any
  batch_shardings: Any
  rng_sharding: Any
  abstract_state: Any
  abstract_carry: Any
  abstract_batch: Any

  def init_state(self, rng: Array) -> state_lib.TrainState:
    """A fresh state, initialised directly into its shardings (no host round trip)."""
    make = functools.partial(state_lib.init_state, self.model, self.optimizers.dense_tx,
                             keep_ema=self.keep_ema)
    return jax.jit(make, out_shardings=self.state_shardings)(rng)

  def init_carry(self) -> act.ACTCarry:
    """The initial ACT carry (every row halted), split along the batch."""
    make = lambda: act.initial_carry(self.model.config, self.global_batch_size)
    return jax.jit(make, out_shardings=self.carry_shardings)()

  def abstract_args(self) -> tuple[Any, Any, Any, Any]:
    """(state, carry, batch, rng) as ShapeDtypeStructs: `step.lower(*args)`."""
    rng = jax.eval_shape(lambda: jax.random.key(0))
    return (self.abstract_state, self.abstract_carry, self.abstract_batch,
            jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=self.rng_sharding))


def build_train_step(model_cfg: Any, opt_cfg, total_steps: int, global_batch_size: int,
                     mesh: Mesh, *, ema_rate: float = 0.0) -> TrainProgram:
  """Builds the jitted, sharded train step of a model config.

  Args:
    model_cfg: a model family config (`models.make_config`).
    opt_cfg: `config.opt`.
    total_steps: updates in the run (the LR schedules end there).
    global_batch_size: rows per step over all processes.
    mesh: the device mesh (`sharding.make_mesh`).
    ema_rate: > 0 keeps an EMA of the weights at this decay (TRM: 0.999).

  Returns:
    The TrainProgram; nothing is allocated until `init_state`/`init_carry`.
  """
  if not 0.0 <= ema_rate < 1.0:
    raise ValueError(f"config.ema_rate={ema_rate}: use 0 (no EMA) or a decay in (0, 1), "
                     "e.g. 0.999 as TRM.")
  model = models.build(model_cfg)
  optimizers = optim.build_optimizers(opt_cfg, total_steps)
  keep_ema = ema_rate > 0
  rng = jax.eval_shape(lambda: jax.random.key(0))
  state = jax.eval_shape(functools.partial(state_lib.init_state, model,
                                           optimizers.dense_tx, keep_ema=keep_ema), rng)
  carry = jax.eval_shape(lambda: act.initial_carry(model_cfg, global_batch_size))
  B, S = global_batch_size, model_cfg.seq_len
  batch = {"inputs": jax.ShapeDtypeStruct((B, S), jnp.int32),
           "labels": jax.ShapeDtypeStruct((B, S), jnp.int32),
           "puzzle_identifiers": jax.ShapeDtypeStruct((B,), jnp.int32)}
  state_sh = sharding.state_shardings(mesh, state)
  carry_sh = sharding.batch_shardings(mesh, carry)
  batch_sh = sharding.batch_shardings(mesh, batch)
  rng_sh = sharding.replicated(mesh)
  fn = functools.partial(train_step, model=model, optimizers=optimizers,
                         global_batch_size=global_batch_size, ema_rate=ema_rate)
  # The key's placement is left to the caller (a process-local key on pods).
  jitted = jax.jit(fn, in_shardings=(state_sh, carry_sh, batch_sh, None),
                   out_shardings=(state_sh, carry_sh, None), donate_argnums=(0, 1))
  return TrainProgram(
      model=model, optimizers=optimizers, mesh=mesh, global_batch_size=global_batch_size,
      keep_ema=keep_ema, step=jitted, state_shardings=state_sh, carry_shardings=carry_sh,
      batch_shardings=batch_sh, rng_sharding=rng_sh,
      abstract_state=state_lib.abstract_with_shardings(state, state_sh),
      abstract_carry=state_lib.abstract_with_shardings(carry, carry_sh),
      abstract_batch=state_lib.abstract_with_shardings(batch, batch_sh))


def build_eval_step(model: Any, halt_max_steps: int, adaptive_halting: bool = False, *,
                    num_samples: int = 1, latent_noise: float = 0.0, select: str = "q_halt"):
  """The jitted `eval_step(weights, batch, rng=None)` of a model (`rng`: the noise
  key, needed when latent_noise > 0; bad sampling options fail here, naming the
  config.eval field)."""
  sampling.check_options(num_samples, latent_noise, select)
  return jax.jit(functools.partial(eval_step, model=model, halt_max_steps=halt_max_steps,
                                   adaptive_halting=adaptive_halting,
                                   num_samples=int(num_samples),
                                   latent_noise=float(latent_noise), select=select))
