"""The sharded train step: same numbers on 1 device, 8-way data and data x fsdp meshes."""
# pylint: disable=invalid-name
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hrm_jax import sharding, state as state_lib, steps
from hrm_jax.models import act, hrm

B = 16


def tiny_config(**kw):
  fields = dict(seq_len=8, vocab_size=6, num_puzzle_identifiers=24, puzzle_emb_ndim=32,
                H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, hidden_size=32,
                num_heads=2, halt_max_steps=3, halt_exploration_prob=0.5,
                forward_dtype="float32")
  fields.update(kw)
  return hrm.HRMConfig(**fields)


def opt_config():
  return ml_collections.ConfigDict(dict(
      lr=1e-3, lr_min_ratio=1.0, lr_warmup_steps=2, beta1=0.9, beta2=0.95,
      weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1))


def batches(num, cfg, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(num):
    inputs = rng.integers(1, cfg.vocab_size, (B, cfg.seq_len)).astype(np.int32)
    yield {"inputs": inputs, "labels": inputs.copy(),  # learn the identity
           "puzzle_identifiers": rng.integers(0, 6, (B,)).astype(np.int32)}


def run(mesh_config, num_steps=3, devices=None):
  cfg = tiny_config()
  mesh = sharding.make_mesh(mesh_config, devices)
  program = steps.build_train_step(cfg, opt_config(), total_steps=10,
                                   global_batch_size=B, mesh=mesh)
  state, carry = program.init_state(jax.random.key(0)), program.init_carry()
  batch_sh = sharding.batch_sharding(mesh)
  metrics = []
  for batch in batches(num_steps, cfg):
    batch = jax.tree.map(lambda x: jax.device_put(x, batch_sh), batch)
    state, carry, m = program.step(state, carry, batch, jax.random.key(1))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), jax.device_get(carry), metrics, state


def test_sharded_steps_match_single_device():
  ref_state, ref_carry, ref_metrics, _ = run([("data", 1)], devices=jax.devices()[:1])
  for mesh_config in ([("data", -1)], [("data", 2), ("fsdp", -1)]):
    st, ca, me, live = run(mesh_config)
    for a, b in zip(jax.tree.leaves(ref_state), jax.tree.leaves(st)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(ref_carry.halted_B, ca.halted_B)
    np.testing.assert_array_equal(ref_carry.steps_B, ca.steps_B)
    for m_ref, m in zip(ref_metrics, me):
      np.testing.assert_allclose(m_ref["loss"], m["loss"], rtol=1e-5)
    if dict(mesh_config).get("fsdp"):
      kernel = live.params["H_level"]["layers_0"]["mlp"]["gate_up_proj"]["kernel"]
      assert "fsdp" in tuple(kernel.sharding.spec), kernel.sharding
      assert "fsdp" in tuple(live.puzzle_emb.sharding.spec), live.puzzle_emb.sharding


def test_step_changes_only_batch_embedding_rows_and_carry_persists():
  st, carry, metrics, _ = run([("data", -1)], num_steps=1)
  used = set(next(batches(1, tiny_config()))["puzzle_identifiers"].tolist())
  changed = {i for i in range(st.puzzle_emb.shape[0]) if np.any(st.puzzle_emb[i] != 0)}
  assert changed == used
  assert int(st.step) == 1
  assert np.all(carry.steps_B == 1)
  assert metrics[0]["lr"] == pytest.approx(1e-3 * 1 / 2)
  assert np.isfinite(metrics[0]["loss"])


def test_mesh_errors_name_the_fix():
  with pytest.raises(ValueError, match="set one axis to -1"):
    sharding.mesh_shape([("data", 2)], 8)
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.mesh_shape([("model", -1)], 8)
  assert sharding.mesh_shape([("data", 2), ("fsdp", -1)], 8) == {"data": 2, "fsdp": 4}


def test_eval_adaptive_halting_freezes_rows_and_counts_steps():
  """Q head forced to 'halt' (bias +5/-5): adaptive eval stops after 1 segment."""
  cfg = tiny_config(halt_max_steps=4)
  model = hrm.HRMInner(cfg)
  state = state_lib.init_state(model, optax.identity(), jax.random.key(0))
  batch = jax.tree.map(jnp.asarray, next(batches(1, cfg)))
  weights = state.eval_weights()
  fixed_sums, fixed_rows = steps.eval_step(weights, batch, model=model, halt_max_steps=4)
  _, _, trajectory = act.rollout(model, weights.variables(), weights.puzzle_emb, batch,
                                 halt_max_steps=4, keep_trajectory=True)
  np.testing.assert_array_equal(fixed_rows["steps"], 4)
  assert trajectory.shape == (4, B, cfg.seq_len)
  assert float(fixed_sums["count"]) == B
  halting = state.replace(params=jax.tree.map(lambda x: x, state.params))
  halting.params["q_head"]["bias"] = jnp.array([5.0, -5.0])
  weights = halting.eval_weights()
  sums, rows = steps.eval_step(weights, batch, model=model, halt_max_steps=4,
                               adaptive_halting=True)
  _, _, trajectory = act.rollout(model, weights.variables(), weights.puzzle_emb, batch,
                                 halt_max_steps=4, adaptive_halting=True,
                                 keep_trajectory=True)
  np.testing.assert_array_equal(rows["steps"], 1)
  assert float(sums["steps"]) == B  # mean segments used = 1
  # Frozen rows keep the prediction of the segment where they halted.
  np.testing.assert_array_equal(rows["predictions"], trajectory[0])
  # Inference-time scaling: more segments than training used.
  _, more = steps.eval_step(state.eval_weights(), batch, model=model, halt_max_steps=6)
  np.testing.assert_array_equal(more["steps"], 6)
