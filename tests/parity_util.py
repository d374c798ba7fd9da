"""Loads the PyTorch fixtures (tests/testdata) and runs our port on the same inputs."""
# pylint: disable=invalid-name
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax import losses, torch_names
from hrm_jax.models import act, hrm

TESTDATA = pathlib.Path(__file__).parent / "testdata"


def load_fixture(name: str):
  return dict(np.load(TESTDATA / f"hrm_torch_parity_{name}.npz"))


def config_from_fixture(fx, **overrides) -> hrm.HRMConfig:
  c = json.loads(str(fx["config_json"]))
  fields = {k: c[k] for k in (
      "seq_len", "vocab_size", "num_puzzle_identifiers", "puzzle_emb_ndim", "H_cycles",
      "L_cycles", "H_layers", "L_layers", "hidden_size", "expansion", "num_heads",
      "pos_encodings", "rms_norm_eps", "rope_theta", "halt_max_steps",
      "halt_exploration_prob", "forward_dtype")}
  fields.update(overrides)
  return hrm.HRMConfig(**fields)


def variables_from_fixture(fx, cfg: hrm.HRMConfig):
  state = {k.split("/", 1)[1]: v for k, v in fx.items()
           if k.startswith(("param/", "buffer/"))}
  converted = torch_names.torch_state_to_variables(state)
  variables = {"params": jax.tree.map(jnp.asarray, converted["params"]),
               "buffers": jax.tree.map(lambda a: jnp.asarray(a, cfg.dtype),
                                       converted["buffers"])}
  return variables, jnp.asarray(converted["puzzle_emb"])


def batch_from_fixture(fx):
  return {k: jnp.asarray(fx[f"batch/{k}"], jnp.int32)
          for k in ("inputs", "labels", "puzzle_identifiers")}


def train_step_loss_and_grads(cfg, variables, table, batch, rng=None):
  """Summed loss of one training ACT step from the initial carry, with grads."""
  model = hrm.HRMInner(cfg)
  B = batch["inputs"].shape[0]
  carry = act.initial_carry(cfg, B)
  carry = act.reset_halted(carry, batch, variables["buffers"]["H_init"],
                           variables["buffers"]["L_init"])
  rows = table[carry.puzzle_identifiers_B]
  rng = jax.random.key(0) if rng is None else rng

  def loss_fn(params, rows, carry):
    new_carry, outputs = act.act_step(
        model, {"params": params, "buffers": variables["buffers"]}, carry, rows, rng,
        training=True)
    loss, metrics = losses.act_loss(outputs, new_carry, cfg.loss_type)
    return loss, (new_carry, outputs, metrics)

  (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True,
                                     allow_int=True)(
      variables["params"], rows, carry)
  return loss, aux, grads


def run_eval_steps(cfg, variables, table, batch, num_steps, step_fn):
  """Evaluation-mode ACT steps from a fresh carry, the carry kept between them:
  `step_fn(variables, carry, rows)` returns a tuple starting with the new carry;
  the list of those tuples."""
  carry = act.initial_carry(cfg, batch["inputs"].shape[0])
  results = []
  for _ in range(num_steps):
    carry = act.reset_halted(carry, batch, variables["buffers"]["H_init"],
                             variables["buffers"]["L_init"])
    result = step_fn(variables, carry, table[carry.puzzle_identifiers_B])
    carry = result[0]
    results.append(result)
  return results


def eval_steps(cfg, variables, table, batch, num_steps):
  """HRM's evaluation-mode ACT steps: [(carry, outputs, loss)] per step."""
  model = hrm.HRMInner(cfg)

  def step(variables, carry, rows):
    carry, outputs = act.act_step(model, variables, carry, rows, None, training=False)
    return carry, outputs, losses.act_loss(outputs, carry, cfg.loss_type)[0]

  return run_eval_steps(cfg, variables, table, batch, num_steps, step)


def fixture_setup(name, util=None):
  """(fixture, config, variables, puzzle table, batch) of a fixture by name, read
  by `util`'s loaders (this module's for HRM, trm_parity_util's for TRM)."""
  util = util or sys.modules[__name__]
  fx = util.load_fixture(name)
  cfg = util.config_from_fixture(fx)
  variables, table = util.variables_from_fixture(fx, cfg)
  return fx, cfg, variables, table, util.batch_from_fixture(fx)


def compiled_grad_flops(model, cfg, batch_size: int, puzzle_emb_ndim: int) -> float:
  """XLA's FLOP count of the compiled gradient of one training ACT step (zero
  weights, a fresh carry), to hold an analytic count against."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, cfg.seq_len), jnp.int32),
      jnp.zeros((1, puzzle_emb_ndim), jnp.float32)))
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["params"])
  carry = act.initial_carry(cfg, batch_size)

  def loss(params):
    new, outputs = act.act_step(model, {"params": params, "buffers": shapes["buffers"]},
                                carry, jnp.zeros((batch_size, puzzle_emb_ndim)),
                                jax.random.key(0), training=True)
    return losses.act_loss(outputs, new)[0]

  cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"]


def rel_err(a, b) -> float:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def torch_grad_name_to_path(name: str):
  """'inner.H_level.layers.0.self_attn.qkv_proj.weight' -> params path and transpose."""
  name = torch_names.strip_prefixes(name)
  if name in torch_names._DIRECT:  # pylint: disable=protected-access
    return torch_names._DIRECT[name]  # pylint: disable=protected-access
  m = torch_names._LAYER.match(name)  # pylint: disable=protected-access
  level, index, block, proj = m.groups()
  return (f"{level}_level", f"layers_{index}", block, proj, "kernel"), True
