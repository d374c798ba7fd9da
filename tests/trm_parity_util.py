"""Loads the PyTorch TRM fixtures (tests/testdata) and runs our port on the same inputs.

`run_optimizer_steps` drives the trainer's own compiled step
(`steps.build_train_step`) for the fixture's two real optimiser steps.
"""
# pylint: disable=invalid-name
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hrm_jax import losses, sharding, steps, torch_names
from hrm_jax.models import act, trm
from parity_util import (  # pylint: disable=unused-import
    TESTDATA, rel_err, run_eval_steps, torch_grad_name_to_path)

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
  """Evaluation-mode ACT steps from a fresh carry, the carry kept between them:
  [(carry, outputs, loss, metrics)] per step."""
  return run_eval_steps(cfg, variables, table, batch, num_steps,
                        functools.partial(_eval_act_step, cfg=cfg))


def train_loop_settings(fx) -> ml_collections.ConfigDict:
  """The fixture's `train_loop` as the `config.opt` fields optim.build_optimizers reads."""
  return ml_collections.ConfigDict(fixture_json(fx)["train_loop"])


def run_optimizer_steps(fx, cfg, variables, table, batches):
  """The fixture's opt/ section through the trainer's own step
  (`steps.build_train_step`, EMA on), from the initial carry.

  Returns:
    (initial state, [(state, carry, info) after each step]); states as dicts of
    TrainState's fields, info = loss (summed, before the update), lr, puzzle_emb_lr.
  """
  loop = train_loop_settings(fx)
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  program = steps.build_train_step(cfg, loop, loop.total_steps, loop.global_batch_size,
                                   mesh, ema_rate=loop.ema_rate)
  state = program.init_state(jax.random.key(0)).replace(
      params=variables["params"], buffers=variables["buffers"], puzzle_emb=table,
      ema=jax.tree.map(jnp.array, variables["params"]))  # EMAHelper.register
  as_dict = lambda st: {k: getattr(st, k) for k in (
      "step", "params", "buffers", "puzzle_emb", "opt_state", "ema")}
  initial = as_dict(jax.device_get(state))
  carry = program.init_carry()
  results = []
  for batch in batches:
    state, carry, m = program.step(state, carry, batch, jax.random.key(0))
    results.append((as_dict(jax.device_get(state)), jax.device_get(carry),
                    {k: m[k] for k in ("loss", "lr", "puzzle_emb_lr")}))
  return initial, results
