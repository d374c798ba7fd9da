"""Loads the PyTorch TRM fixtures (tests/testdata) and runs our port on the same inputs.

`optimizer_step` applies one training step in the order our trainer does
(reset halted rows, gather puzzle rows, value_and_grad of loss / global batch,
AdamATan2, SignSGD on the rows, EMA); it stands in for the real step builder
until the trainer handles TRM.
"""
# pylint: disable=invalid-name
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hrm_jax import losses, optim, torch_names
from hrm_jax.models import act, trm
from parity_util import TESTDATA, rel_err, torch_grad_name_to_path  # pylint: disable=unused-import

CONFIG_FIELDS = (
    "seq_len", "vocab_size", "num_puzzle_identifiers", "puzzle_emb_ndim",
    "puzzle_emb_len", "H_cycles", "L_cycles", "L_layers", "hidden_size", "expansion",
    "num_heads", "pos_encodings", "mlp_t", "rms_norm_eps", "rope_theta",
    "halt_max_steps", "halt_exploration_prob", "no_ACT_continue", "forward_dtype",
    "loss_type")


def load_fixture(name: str) -> dict[str, np.ndarray]:
  return dict(np.load(TESTDATA / f"trm_torch_parity_{name}.npz"))


def fixture_json(fx) -> dict[str, Any]:
  return json.loads(str(fx["config_json"]))


def config_from_fixture(fx, **overrides) -> trm.TRMConfig:
  c = fixture_json(fx)
  fields = {k: c[k] for k in CONFIG_FIELDS}
  fields.update(overrides)
  return trm.TRMConfig(**fields)


def torch_state(fx) -> dict[str, np.ndarray]:
  """param/ and buffer/ entries under their state-dict names (no prefix)."""
  return {k.split("/", 1)[1]: v for k, v in fx.items()
          if k.startswith(("param/", "buffer/"))}


def variables_from_fixture(fx, cfg: trm.TRMConfig):
  converted = torch_names.torch_state_to_variables(torch_state(fx))
  variables = {"params": jax.tree.map(jnp.asarray, converted["params"]),
               "buffers": jax.tree.map(lambda a: jnp.asarray(a, cfg.dtype),
                                       converted["buffers"])}
  return variables, jnp.asarray(converted["puzzle_emb"])


def batch_from_fixture(fx, prefix: str = "batch"):
  return {k: jnp.asarray(fx[f"{prefix}/{k}"], jnp.int32)
          for k in ("inputs", "labels", "puzzle_identifiers")}


def torch_layout(tree, torch_name: str) -> np.ndarray:
  """The leaf of `tree` that `torch_name` maps to, in PyTorch layout ([out, in])."""
  path, transpose = torch_grad_name_to_path(torch_name)
  leaf = tree
  for key in path:
    leaf = leaf[key]
  return np.asarray(leaf).T if transpose else np.asarray(leaf)


@functools.partial(jax.jit, static_argnames=("cfg", "divisor"))
def _loss_and_grads(params, buffers, rows_BxE, carry, rng, *, cfg, divisor=1.0):
  """value_and_grad of loss / divisor w.r.t. params, puzzle rows and carry."""
  model = trm.TRMInner(cfg)

  def loss_fn(params, rows_BxE, carry):
    new_carry, outputs = act.act_step(model, {"params": params, "buffers": buffers},
                                      carry, rows_BxE, rng, training=True)
    loss_sum, metrics = losses.act_loss(outputs, new_carry, cfg.loss_type)
    return loss_sum / divisor, (loss_sum, new_carry, outputs, metrics)

  (_, aux), grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True,
                                       allow_int=True)(params, rows_BxE, carry)
  return aux, grads


def train_act_step(cfg, variables, table, carry, batch, rng=None):
  """One training ACT step (no optimiser step): summed loss and gradients.

  Returns:
    (loss, (reset carry, new carry, outputs, metrics), (param grads, row grads,
    carry grads)).
  """
  buffers = variables["buffers"]
  carry = act.reset_halted(carry, batch, buffers["H_init"], buffers["L_init"])
  rows_BxE = table[carry.puzzle_identifiers_B]
  rng = jax.random.key(0) if rng is None else rng
  (loss, new_carry, outputs, metrics), grads = _loss_and_grads(
      variables["params"], buffers, rows_BxE, carry, rng, cfg=cfg)
  return loss, (carry, new_carry, outputs, metrics), grads


@functools.partial(jax.jit, static_argnames=("cfg",))
def _eval_act_step(variables, carry, rows_BxE, *, cfg):
  carry, outputs = act.act_step(trm.TRMInner(cfg), variables, carry, rows_BxE, None,
                                training=False)
  loss, metrics = losses.act_loss(outputs, carry, cfg.loss_type)
  return carry, outputs, loss, metrics


def eval_steps(cfg, variables, table, batch, num_steps):
  """Evaluation-mode ACT steps from a fresh carry, the carry kept between them."""
  carry = act.initial_carry(cfg, batch["inputs"].shape[0])
  results = []
  for _ in range(num_steps):
    carry = act.reset_halted(carry, batch, variables["buffers"]["H_init"],
                             variables["buffers"]["L_init"])
    rows = table[carry.puzzle_identifiers_B]
    carry, outputs, loss, metrics = _eval_act_step(variables, carry, rows, cfg=cfg)
    results.append((carry, outputs, loss, metrics))
  return results


def train_loop_settings(fx) -> ml_collections.ConfigDict:
  """The fixture's `train_loop` as the `config.opt` fields optim.build_optimizers reads."""
  return ml_collections.ConfigDict(fixture_json(fx)["train_loop"])


def init_train_state(variables, table, dense_tx):
  """params, buffers, puzzle table, optimiser state, EMA shadow (= the initial
  weights, as EMAHelper.register) and the 0-based step."""
  params = variables["params"]
  return {"params": params, "buffers": variables["buffers"], "puzzle_emb": table,
          "opt_state": dense_tx.init(params), "ema": jax.tree.map(jnp.array, params),
          "step": 0}


def optimizer_step(cfg, loop, dense_tx, puzzle_emb_lr_fn, state, carry, batch,
                   rng=None):
  """One training step in the trainer's order; returns (state, carry, info).

  info: loss (summed over the batch, before the update), lr, puzzle_emb_lr.
  """
  buffers = state["buffers"]
  carry = act.reset_halted(carry, batch, buffers["H_init"], buffers["L_init"])
  ids_B = carry.puzzle_identifiers_B
  rows_BxE = state["puzzle_emb"][ids_B]
  rng = jax.random.key(0) if rng is None else rng
  (loss_sum, new_carry, _, _), (param_grads, row_grads_BxE, _) = _loss_and_grads(
      state["params"], buffers, rows_BxE, carry, rng, cfg=cfg,
      divisor=float(loop.global_batch_size))
  updates, opt_state = dense_tx.update(param_grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  emb_lr = puzzle_emb_lr_fn(state["step"])
  table = optim.sign_sgd_sparse_update(state["puzzle_emb"], ids_B, row_grads_BxE,
                                       emb_lr, loop.puzzle_emb_weight_decay)
  ema = optim.ema_update(state["ema"], params, loop.ema_rate)
  lr = optim.lr_schedule(loop.lr, loop.lr_warmup_steps, loop.total_steps,
                         loop.lr_min_ratio)(state["step"])
  new_state = dict(state, params=params, puzzle_emb=table, opt_state=opt_state, ema=ema,
                   step=state["step"] + 1)
  return new_state, new_carry, {"loss": loss_sum, "lr": lr, "puzzle_emb_lr": emb_lr}


def run_optimizer_steps(fx, cfg, variables, table, batches):
  """The fixture's opt/ section: steps on `batches` from the initial carry.

  Returns:
    (initial state, [(state, carry, info) after each step]).
  """
  loop = train_loop_settings(fx)
  dense_tx, puzzle_emb_lr_fn = optim.build_optimizers(loop, loop.total_steps)
  state = init_train_state(variables, table, dense_tx)
  initial = state
  carry = act.initial_carry(cfg, batches[0]["inputs"].shape[0])
  results = []
  for batch in batches:
    state, carry, info = optimizer_step(cfg, loop, dense_tx, puzzle_emb_lr_fn, state,
                                        carry, batch)
    results.append((state, carry, info))
  return initial, results
