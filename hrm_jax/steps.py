"""The train and eval steps, and the one place they are compiled.

train_step(state, carry, batch, rng) -> (state, carry, metric sums)
  = one deep-supervision segment for every row of the persistent batch, one
  AdamATan2 update of the dense weights, one sparse SignSGD update of the
  puzzle-embedding rows in the batch (reference `pretrain.train_batch`) and,
  when the run keeps one, one EMA update of the weights.
  `accumulated_train_step` is the same update with the rows run in k
  micro-batches (`config.grad_accum_steps`): the paper's batch on fewer chips.

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

from absl import logging
import jax
import jax.extend
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hrm_jax import cpu_kind, losses, models, optim, sampling, sharding, state as state_lib
from hrm_jax.data.puzzles import IGNORE_LABEL_ID
from hrm_jax.models import act

Array = jax.Array


def _segment_loss(params, rows_BxE, carry, rng, *, model, buffers, global_batch_size):
  """The differentiated part of a step: one ACT segment and its loss.

  Returns (loss_sum / global_batch_size, (new carry, metric sums)). Dividing by
  the global batch gives the mean the reference's all-reduce(SUM) of
  `loss / global_batch_size` gives, independent of the device count and of
  how the rows are split into micro-batches.
  """
  variables = {"params": params, "buffers": buffers}
  new_carry, outputs = act.act_step(model, variables, carry, rows_BxE, rng, training=True)
  loss_sum, metric_sums = losses.act_loss(outputs, new_carry, model.config.loss_type)
  return loss_sum / global_batch_size, (new_carry, metric_sums)


def _apply_gradients(state: state_lib.TrainState, param_grads, ids_B: Array,
                     row_grads_BxE: Array, loss: Array, metric_sums: dict[str, Array], *,
                     optimizers: optim.Optimizers, global_batch_size: int,
                     ema_rate: float):
  """One AdamATan2 update, one sparse SignSGD update of the rows of `ids_B`, one
  EMA update; returns (new state, metric sums with the step's scalars)."""
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
  return new_state, metric_sums


def train_step(state: state_lib.TrainState, carry: act.ACTCarry, batch: dict[str, Array],
               rng: Array, *, model, optimizers: optim.Optimizers,
               global_batch_size: int, ema_rate: float = 0.0):
  """One optimizer update on one ACT segment. See the module docstring."""
  rng = jax.random.fold_in(rng, state.step)
  carry = act.reset_halted(carry, batch, *act.initial_states(
      model, {"params": state.params, "buffers": state.buffers}))
  ids_B = carry.puzzle_identifiers_B
  rows_BxE = state.puzzle_emb[ids_B]
  loss_fn = functools.partial(_segment_loss, model=model, buffers=state.buffers,
                              global_batch_size=global_batch_size)
  (loss, (new_carry, metric_sums)), (param_grads, row_grads_BxE) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(state.params, rows_BxE, carry, rng)
  new_state, metric_sums = _apply_gradients(
      state, param_grads, ids_B, row_grads_BxE, loss, metric_sums, optimizers=optimizers,
      global_batch_size=global_batch_size, ema_rate=ema_rate)
  return new_state, new_carry, metric_sums


# ---- Gradient accumulation.
#
# The global batch of B rows lies on n devices, b = B / n rows each. With k
# micro-batches of m = b / k rows, micro-batch j holds rows [j*m, (j+1)*m) of
# *every* device's slice (global rows d*b + j*m + r), so each micro-batch is
# split over all devices like the full batch and no row moves between devices.
# `_to_micro` / `_from_micro` are that reshaping and its inverse.


def _to_micro(x: Array, num_shards: int, accum_steps: int) -> Array:
  """[B, ...] -> [k, n*m, ...]: micro-batch j = rows j*m..(j+1)*m of each shard."""
  n, k = num_shards, accum_steps
  m = x.shape[0] // (n * k)
  x = x.reshape((n, k, m) + x.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape((k, n * m) + x.shape[3:])


def _from_micro(x: Array, num_shards: int) -> Array:
  """Inverse of `_to_micro`: [k, n*m, ...] -> [B, ...]."""
  k, nm = x.shape[:2]
  n = num_shards
  x = x.reshape((k, n, nm // n) + x.shape[2:])
  return jnp.swapaxes(x, 0, 1).reshape((k * nm,) + x.shape[3:])


@functools.lru_cache(maxsize=None)
def micro_batch_key_impl(base_impl: Any, num_shards: int, accum_steps: int,
                         micro_rows: int):
  """A PRNG implementation whose draws for a micro-batch are the full batch's.

  The ACT exploration draws one value per row (`jax.random.uniform(key, (B,))`
  in `act.act_step`); a micro-batch of n*m rows would draw n*m *other* values
  from the same key, so rows would explore differently with and without
  accumulation. A key of this implementation is the step's key plus the
  micro-batch index j; its `random_bits` for a [n*m, ...] draw computes the
  [B, ...] draw of the step's key (base implementation, B = n*k*m values: a
  few KB) and returns the rows of micro-batch j. Splits and fold-ins act on
  the base key and keep j, so `split`, `uniform` and `randint` inside
  `act_step` see exactly the values the un-accumulated step sees.
  """
  n, k, m = num_shards, accum_steps, micro_rows
  base_shape = jax.eval_shape(
      lambda: jax.random.key_data(jax.random.key(0, impl=base_impl))).shape

  def wrap(data):
    return jax.random.wrap_key_data(data[..., :-1], impl=base_impl)

  def with_index(base_data, index):
    index = jnp.broadcast_to(index, base_data.shape[:-1] + (1,)).astype(jnp.uint32)
    return jnp.concatenate([base_data, index], axis=-1)

  def seed(s):
    return with_index(jax.random.key_data(jax.random.key(s, impl=base_impl)), 0)

  def split(data, shape):
    return with_index(jax.random.key_data(jax.random.split(wrap(data), shape)), data[-1])

  def fold_in(data, value):
    return with_index(jax.random.key_data(jax.random.fold_in(wrap(data), value)), data[-1])

  def random_bits(data, bit_width, shape):
    if not shape or shape[0] != n * m:
      raise ValueError(f"A micro-batch key draws per-row values of shape [{n * m}, ...], "
                       f"got {shape}: only per-row draws can be split into micro-batches.")
    dtype = jnp.dtype(f"uint{bit_width}")
    full = jax.random.bits(wrap(data), (n * k * m,) + tuple(shape[1:]), dtype)
    return _to_micro(full, n, k)[data[-1]]

  return jax.extend.random.define_prng_impl(
      key_shape=base_shape[:-1] + (base_shape[-1] + 1,), seed=seed, split=split,
      random_bits=random_bits, fold_in=fold_in,
      name=f"micro_batch_{n}x{k}x{m}_{base_impl}")


def accumulated_train_step(state: state_lib.TrainState, carry: act.ACTCarry,
                           batch: dict[str, Array], rng: Array, *, model,
                           optimizers: optim.Optimizers, global_batch_size: int,
                           ema_rate: float, accum_steps: int, mesh: Mesh):
  """`train_step` with the rows split into `accum_steps` micro-batches.

  Same update as `train_step` (up to float summation order): the halted rows
  are reset on the whole batch, each micro-batch runs its segment and its
  backward pass inside one `lax.scan` (so only one micro-batch's activations
  are alive), dense gradients are summed, the puzzle-embedding row gradients
  of every micro-batch are put back in batch order and SignSGD sees their sum
  per id over the *whole* batch (an id in two micro-batches gets one update
  with the sign of the sum), then one AdamATan2, one SignSGD and one EMA update
  are applied. Every row draws the exploration values it draws in `train_step`
  (`micro_batch_key_impl`), so carries, halting and metrics are the same too.
  """
  n, k = mesh.devices.size, accum_steps
  m = global_batch_size // (n * k)
  rng = jax.random.fold_in(rng, state.step)
  carry = act.reset_halted(carry, batch, *act.initial_states(
      model, {"params": state.params, "buffers": state.buffers}))
  ids_B = carry.puzzle_identifiers_B
  rows_BxE = state.puzzle_emb[ids_B]

  micro_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES))
  batch_sharding = sharding.batch_sharding(mesh)

  def split(x):
    return jax.lax.with_sharding_constraint(_to_micro(x, n, k), micro_sharding)

  def merge(x):
    return jax.lax.with_sharding_constraint(_from_micro(x, n), batch_sharding)

  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)  # a raw uint32 key of the default impl
  key_impl = micro_batch_key_impl(jax.random.key_impl(rng), n, k, m)
  rng_data = jax.random.key_data(rng)
  loss_fn = functools.partial(_segment_loss, model=model, buffers=state.buffers,
                              global_batch_size=global_batch_size)
  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

  def micro_step(grad_sums, xs):
    index, carry_j, rows_j = xs
    rng_j = jax.random.wrap_key_data(
        jnp.concatenate([rng_data, index.astype(jnp.uint32)[None]]), impl=key_impl)
    (loss_j, (new_carry_j, metrics_j)), (param_grads_j, row_grads_j) = grad_fn(
        state.params, rows_j, carry_j, rng_j)
    grad_sums = jax.tree.map(jnp.add, grad_sums, param_grads_j)
    return grad_sums, (new_carry_j, metrics_j, loss_j, row_grads_j)

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  xs = (jnp.arange(k), jax.tree.map(split, carry), split(rows_BxE))
  param_grads, (new_carry, metric_sums, loss, row_grads) = jax.lax.scan(
      micro_step, zeros, xs)
  new_carry = jax.tree.map(merge, new_carry)
  row_grads_BxE = merge(row_grads)
  metric_sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), metric_sums)
  new_state, metric_sums = _apply_gradients(
      state, param_grads, ids_B, row_grads_BxE, jnp.sum(loss), metric_sums,
      optimizers=optimizers, global_batch_size=global_batch_size, ema_rate=ema_rate)
  return new_state, new_carry, metric_sums


def check_grad_accum_steps(grad_accum_steps: int, global_batch_size: int,
                           num_devices: int) -> None:
  """Raises ValueError naming the fix unless k divides the per-device batch."""
  k = grad_accum_steps
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise ValueError(f"config.grad_accum_steps={k!r}: use a positive integer (1 = no "
                     "accumulation).")
  if global_batch_size % num_devices:
    raise ValueError(f"Global batch size {global_batch_size} must divide by the "
                     f"{num_devices} devices; change config.batch_size or config.mesh.")
  per_device = global_batch_size // num_devices
  if per_device % k:
    divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
    near = sorted(divisors, key=lambda d: (abs(d - k), d))[:3]
    raise ValueError(
        f"config.grad_accum_steps={k} must divide the per-device batch {per_device} "
        f"(config.batch_size={global_batch_size} over {num_devices} devices): use one "
        f"of {sorted(near)} (divisors of {per_device}), or change config.batch_size.")


def eval_step(weights: state_lib.Weights, batch: dict[str, Array], rng: Array | None = None,
              *, model, halt_max_steps: int, adaptive_halting: bool = False,
              num_samples: int = 1, latent_noise: float = 0.0, select: str = "q_halt",
              noise_on: str = "both"):
  """Runs a fresh carry to the end on one batch.

  With `num_samples` K > 1 the rollout runs K (noisy, `latent_noise` placed by
  `noise_on`, from `rng`) trajectories per row and `select` picks one
  (`hrm_jax.sampling`; "checker" needs the host's rule check, so here it takes
  the q_halt choice, and the rows carry every sample's metrics,
  `sample_metrics`, for the evaluator to re-pick). The metrics of
  `losses.act_loss` are those of the chosen sample; the sums of
  `sampling.sample_metric_sums` (every rule and the oracle) are added. With
  K = 1 the step is the plain evaluation (plus the noise, if any); with K > 1,
  `sample_steps` sums the segments of all K samples of the evaluated rows (the
  compute: `evaluation.build` turns segments into NFE).

  Returns:
    (metric sums as in `losses.act_loss` with every row counted as halted;
     outputs: predictions [B,S] int32, q_halt_logits [B], steps [B] of the
     chosen sample and, when K > 1, sample_predictions [B,K,S],
     sample_q_halt_logits, sample_q_halt_step and sample_confidence [B,K]).
  """
  K = num_samples
  carry, outputs, _ = act.rollout(model, weights.variables(), weights.puzzle_emb, batch,
                                  halt_max_steps=halt_max_steps,
                                  adaptive_halting=adaptive_halting, num_samples=K,
                                  latent_noise=latent_noise, rng=rng, noise_on=noise_on,
                                  track_halt=K > 1)
  extra_sums, extra_rows = {}, {}
  if K > 1:
    c = sampling.sample_arrays(outputs, carry.inputs_BxS, K)
    extra_sums = sampling.sample_metric_sums(c["predictions"], c["q_halt"], batch["labels"],
                                             q_halt_step_BxK=c["q_halt_step"],
                                             confidence_BxK=c["confidence"])
    valid_B = jnp.any(batch["labels"] != IGNORE_LABEL_ID, axis=-1)
    extra_sums["sample_steps"] = jnp.sum(jnp.where(
        valid_B, jnp.sum(sampling.split_samples(carry.steps_B, K), -1), 0)).astype(jnp.float32)
    if select == "checker":
      extra_rows["sample_metrics"] = jax.tree.map(
          lambda x: sampling.split_samples(x, K), _per_row_metrics(outputs, carry, model))
    choice_B, _ = sampling.choose(select, c["predictions"], c["q_halt"],
                                  q_halt_step_BxK=c["q_halt_step"],
                                  confidence_BxK=c["confidence"])
    rows_B = jnp.arange(choice_B.shape[0]) * K + choice_B  # into the B*K rows
    carry, outputs = jax.tree.map(lambda x: x[rows_B], (carry, outputs))
    extra_rows.update(sample_predictions=c["predictions"], sample_q_halt_logits=c["q_halt"],
                      sample_q_halt_step=c["q_halt_step"],
                      sample_confidence=c["confidence"])
  loss_sum, metric_sums = losses.act_loss(outputs, carry, model.config.loss_type)
  row_outputs = {
      "predictions": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32),
      "q_halt_logits": outputs["q_halt_logits"],
      "steps": carry.steps_B,
      **extra_rows,
  }
  return dict(metric_sums, loss=loss_sum, **extra_sums), row_outputs


def _per_row_metrics(outputs, carry, model) -> dict[str, Array]:
  """`losses.act_loss` of every row alone ([N] per metric, loss included): what the
  host sums over the rows of the samples the checker chose."""

  def one(out, row_carry):  # a batch of one row
    loss, sums = losses.act_loss(*jax.tree.map(lambda x: x[None], (out, row_carry)),
                                 model.config.loss_type)
    return dict(sums, loss=loss)

  return jax.vmap(one)(outputs, carry)


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
    grad_accum_steps: micro-batches per step (1: the plain `train_step`).
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
  grad_accum_steps: int = 1

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


@functools.lru_cache(maxsize=None)
def _log_once(line: str) -> None:
  logging.info(line)


def build_train_step(model_cfg: Any, opt_cfg, total_steps: int, global_batch_size: int,
                     mesh: Mesh, *, ema_rate: float = 0.0,
                     grad_accum_steps: int = 1) -> TrainProgram:
  """Builds the jitted, sharded train step of a model config.

  Args:
    model_cfg: a model family config (`models.make_config`).
    opt_cfg: `config.opt`.
    total_steps: updates in the run (the LR schedules end there).
    global_batch_size: rows per step over all processes.
    mesh: the device mesh (`sharding.make_mesh`).
    ema_rate: > 0 keeps an EMA of the weights at this decay (TRM: 0.999).
    grad_accum_steps: k > 1 runs the rows in k micro-batches inside the step
      (`accumulated_train_step`: one update, the same numbers, the activation
      memory of B / k rows); k must divide the per-device batch.

  Returns:
    The TrainProgram; nothing is allocated until `init_state`/`init_carry`.
  """
  if not 0.0 <= ema_rate < 1.0:
    raise ValueError(f"config.ema_rate={ema_rate}: use 0 (no EMA) or a decay in (0, 1), "
                     "e.g. 0.999 as TRM.")
  check_grad_accum_steps(grad_accum_steps, global_batch_size, mesh.devices.size)
  if jax.default_backend() == "cpu":
    _log_once(cpu_kind.dtype_line(model_cfg.forward_dtype))
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
  if grad_accum_steps > 1:
    fn = functools.partial(accumulated_train_step, model=model, optimizers=optimizers,
                           global_batch_size=global_batch_size, ema_rate=ema_rate,
                           accum_steps=grad_accum_steps, mesh=mesh)
  # The key's placement is left to the caller (a process-local key on pods).
  jitted = jax.jit(fn, in_shardings=(state_sh, carry_sh, batch_sh, None),
                   out_shardings=(state_sh, carry_sh, None), donate_argnums=(0, 1))
  return TrainProgram(
      model=model, optimizers=optimizers, mesh=mesh, global_batch_size=global_batch_size,
      keep_ema=keep_ema, step=jitted, state_shardings=state_sh, carry_shardings=carry_sh,
      batch_shardings=batch_sh, rng_sharding=rng_sh,
      abstract_state=state_lib.abstract_with_shardings(state, state_sh),
      abstract_carry=state_lib.abstract_with_shardings(carry, carry_sh),
      abstract_batch=state_lib.abstract_with_shardings(batch, batch_sh),
      grad_accum_steps=grad_accum_steps)


def build_eval_step(model: Any, halt_max_steps: int, adaptive_halting: bool = False, *,
                    num_samples: int = 1, latent_noise: float = 0.0, select: str = "q_halt",
                    noise_on: str = "both"):
  """The jitted `eval_step(weights, batch, rng=None)` of a model (`rng`: the noise
  key, needed when latent_noise > 0; bad sampling options fail here, naming the
  config.eval field)."""
  sampling.check_options(num_samples, latent_noise, select)
  return jax.jit(functools.partial(eval_step, model=model, halt_max_steps=halt_max_steps,
                                   adaptive_halting=adaptive_halting,
                                   num_samples=int(num_samples),
                                   latent_noise=float(latent_noise), select=select,
                                   noise_on=noise_on))
