"""100 real optimizer steps of the original PyTorch HRM against the trainer's step.

`tests/testdata/hrm_torch_trajectory.npz` (README of shared/fixtures) holds the
original's own `pretrain.train_batch` run for 100 steps on a 6x6 Sudoku
(float32, exploration 0): per-step loss, halting, and every parameter at steps
1, 2, 10 and 100. Here `steps.build_train_step` (the step `train_and_evaluate`
runs) starts from the same initial weights and eats the same batches, with the
ACT carry persisting between steps. Tolerances are the fixture README's: the
q_continue row of the Q head starts differently (jit rounding of a zero
gradient, which AdamATan2 turns into a full step), so it and the summed loss
(which contains its term) are compared loosely; float32 rounding grows
chaotically after ~50 steps, so later values are not compared, but halting is
identical at every step.
"""
# pylint: disable=invalid-name
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import parity_util as pu
from hrm_jax import sharding, steps, torch_names
from hrm_jax.models import hrm

FIXTURE = pathlib.Path(__file__).parent / "testdata" / "hrm_torch_trajectory.npz"


@pytest.fixture(scope="module")
def trajectory():
  fx = dict(np.load(FIXTURE))
  c = json.loads(str(fx["config_json"]))
  cfg = hrm.HRMConfig(**{k: c[k] for k in (
      "seq_len", "vocab_size", "num_puzzle_identifiers", "puzzle_emb_ndim", "H_cycles",
      "L_cycles", "H_layers", "L_layers", "hidden_size", "expansion", "num_heads",
      "pos_encodings", "rms_norm_eps", "rope_theta", "halt_max_steps",
      "halt_exploration_prob", "forward_dtype", "loss_type")})
  loop = c["train_loop"]
  opt = ml_collections.ConfigDict({k: loop[k] for k in (
      "lr", "lr_min_ratio", "lr_warmup_steps", "beta1", "beta2", "weight_decay",
      "puzzle_emb_lr", "puzzle_emb_weight_decay")})
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  program = steps.build_train_step(cfg, opt, loop["total_steps"], c["batch_size"], mesh)
  init = torch_names.torch_state_to_variables(
      {k.split("/", 2)[2]: v for k, v in fx.items() if k.startswith("init/")})
  state = program.init_state(jax.random.key(0))
  state = state.replace(
      params=jax.tree.map(jnp.asarray, init["params"]),
      buffers=jax.tree.map(lambda a: jnp.asarray(a, cfg.dtype), init["buffers"]),
      puzzle_emb=jnp.asarray(init["puzzle_emb"]))
  carry = program.init_carry()
  records, params_at = [], {}
  for s in range(1, c["steps"] + 1):
    batch = {k: fx[f"batches/{k}"][s - 1] for k in ("inputs", "labels", "puzzle_identifiers")}
    state, carry, m = program.step(state, carry, batch, jax.random.key(0))
    records.append({"metrics": jax.device_get(m), "halted": np.asarray(carry.halted_B),
                    "steps": np.asarray(carry.steps_B)})
    if s in (1, 10):
      params_at[s] = jax.device_get(state.params)
  return fx, records, params_at


def test_halting_is_identical_at_every_step(trajectory):
  fx, records, _ = trajectory
  for s, r in enumerate(records, start=1):
    np.testing.assert_array_equal(r["halted"], fx["step/halted"][s - 1], err_msg=f"step {s}")
    np.testing.assert_array_equal(r["steps"], fx["step/steps"][s - 1], err_msg=f"step {s}")


def test_losses_and_learning_rates(trajectory):
  fx, records, _ = trajectory
  for s, r in enumerate(records, start=1):
    m = r["metrics"]
    np.testing.assert_allclose(m["lr"], fx["step/lr"][s - 1], rtol=1e-6)
    np.testing.assert_allclose(m["puzzle_emb_lr"], fx["step/puzzle_emb_lr"][s - 1], rtol=1e-6)
    np.testing.assert_allclose(m["count"], fx["step/metric/count"][s - 1])
    if s <= 50:  # README: lm_loss 1.2e-7 for 10 steps, 1e-5 for 50
      assert pu.rel_err(m["lm_loss"], fx["step/metric/lm_loss"][s - 1]) < (
          1e-4 if s <= 10 else 1e-3), s
    if s <= 10:  # the summed loss carries the q_continue term (~1e-4)
      assert pu.rel_err(m["loss"], fx["step/loss"][s - 1]) < 1e-3, s
      assert pu.rel_err(m["q_halt_loss"], fx["step/metric/q_halt_loss"][s - 1]) < 1e-4, s


@pytest.mark.parametrize("s", [1, 10])
def test_parameters_after_the_update(trajectory, s):
  fx, _, params_at = trajectory
  checked = 0
  for name in json.loads(str(fx["param_names"])):
    if "q_head" in name:  # its q_continue row differs by design (module docstring)
      continue
    path, transpose = pu.torch_grad_name_to_path(name)
    ours = params_at[s]
    for key in path:
      ours = ours[key]
    ours = np.asarray(ours).T if transpose else np.asarray(ours)
    assert pu.rel_err(ours, fx[f"param/{s}/{name}"]) < 1e-4, (s, name)
    checked += 1
  assert checked == 18
