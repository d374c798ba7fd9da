"""Gradient accumulation (`config.grad_accum_steps`): the same step as without.

k = 2 and 4 micro-batches must give the parameters, optimiser state, puzzle
table, carry (states, step counts, halting) and metric sums of the plain step
after a few steps, on one device and on the 8-device mesh. The test batch has
few puzzle ids, so most ids appear in several micro-batches (SignSGD must see
the sum of their row gradients), and exploration 0.5 with M = 3 so the
per-row exploration draws decide many halts (the Q head starts biased to halt).
"""
# pylint: disable=invalid-name
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax import sharding, steps
from test_train_step import opt_config, tiny_config

B = 32  # 4 rows per device on the 8-device mesh: k = 1, 2, 4 all divide it
NUM_STEPS = 4


def batches(num, cfg, seed=3):
  """Random tokens; only 5 puzzle ids, so ids repeat across micro-batches."""
  rng = np.random.default_rng(seed)
  for _ in range(num):
    inputs = rng.integers(1, cfg.vocab_size, (B, cfg.seq_len)).astype(np.int32)
    yield {"inputs": inputs, "labels": inputs.copy(),
           "puzzle_identifiers": rng.integers(0, 5, (B,)).astype(np.int32)}


def _run(grad_accum_steps, mesh_config, devices=None, ema_rate=0.0, **model_kw):
  cfg = tiny_config(**model_kw)
  mesh = sharding.make_mesh(mesh_config, devices)
  program = steps.build_train_step(cfg, opt_config(), total_steps=10, global_batch_size=B,
                                   mesh=mesh, ema_rate=ema_rate,
                                   grad_accum_steps=grad_accum_steps)
  assert program.grad_accum_steps == grad_accum_steps
  state, carry = program.init_state(jax.random.key(0)), program.init_carry()
  # Q head biased to "halt" (+5 / -5): rows halt after one segment unless their
  # exploration draw sets a minimum of 2 or 3, so the draws decide the carry.
  bias = state.params["q_head"]["bias"]
  state.params["q_head"]["bias"] = jax.device_put(jnp.array([5.0, -5.0]), bias.sharding)
  batch_sh = sharding.batch_sharding(mesh)
  metrics, halted = [], []
  for batch in batches(NUM_STEPS, cfg):
    batch = jax.tree.map(lambda x: jax.device_put(x, batch_sh), batch)
    state, carry, m = program.step(state, carry, batch, jax.random.key(1))
    metrics.append(jax.device_get(m))
    halted.append(np.asarray(carry.halted_B))
  return jax.device_get(state), jax.device_get(carry), metrics, halted


def _assert_same(ref, got, explores=True):
  (ref_state, ref_carry, ref_metrics, ref_halted) = ref
  (state, carry, metrics, halted) = got
  flat_ref, _ = jax.tree_util.tree_flatten_with_path(ref_state)
  flat = jax.tree.leaves(state)
  assert len(flat_ref) == len(flat)
  for (path, a), b in zip(flat_ref, flat):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-6,
                               err_msg=jax.tree_util.keystr(path))
  # Halting (with the exploration draws) and step counts are decisions: exact.
  for h_ref, h in zip(ref_halted, halted):
    np.testing.assert_array_equal(h_ref, h)
  if explores:  # both outcomes occur, so the draws were tested
    assert 0 < np.mean(ref_halted) < 1, np.mean(ref_halted)
  np.testing.assert_array_equal(ref_carry.steps_B, carry.steps_B)
  np.testing.assert_array_equal(ref_carry.inputs_BxS, carry.inputs_BxS)
  np.testing.assert_array_equal(ref_carry.puzzle_identifiers_B, carry.puzzle_identifiers_B)
  np.testing.assert_allclose(carry.z_H_BxLxD, ref_carry.z_H_BxLxD, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(carry.z_L_BxLxD, ref_carry.z_L_BxLxD, rtol=1e-5, atol=1e-5)
  for i, (m_ref, m) in enumerate(zip(ref_metrics, metrics)):
    assert set(m) == set(m_ref)
    for key in m_ref:
      np.testing.assert_allclose(m[key], m_ref[key], rtol=1e-5, atol=1e-6,
                                 err_msg=f"step {i + 1}: {key}")


@pytest.fixture(scope="module")
def plain_one_device():
  return _run(1, [("data", 1)], devices=jax.devices()[:1])


@pytest.mark.parametrize("k", [2, 4])
def test_accum_matches_plain_step_one_device(plain_one_device, k):
  _assert_same(plain_one_device, _run(k, [("data", 1)], devices=jax.devices()[:1]))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_accum_matches_plain_step_on_8_device_mesh(plain_one_device, k):
  """32 rows on 8 devices, 4 per device: k = 4 is one row per micro-batch and
  device."""
  _assert_same(plain_one_device, _run(k, [("data", -1)]))


def test_accum_matches_plain_step_on_data_fsdp_mesh(plain_one_device):
  """Parameters and the puzzle table split over fsdp as well."""
  _assert_same(plain_one_device, _run(2, [("data", 2), ("fsdp", -1)]))


def test_accum_exploration_draws_are_the_plain_steps():
  """The micro-batch key's draws, put back in batch order, are the full draws."""
  n, k, m = 2, 4, 3
  full_key = jax.random.fold_in(jax.random.key(5), 2)
  impl = steps.micro_batch_key_impl(jax.random.key_impl(full_key), n, k, m)
  explore, min_steps = jax.random.split(full_key)
  want_u = jax.random.uniform(explore, (n * k * m,))
  want_r = jax.random.randint(min_steps, (n * k * m,), 2, 9)

  @jax.jit
  def draw(j):
    key = jax.random.wrap_key_data(
        jnp.concatenate([jax.random.key_data(full_key), j.astype(jnp.uint32)[None]]),
        impl=impl)
    e, s = jax.random.split(key)
    return jax.random.uniform(e, (n * m,)), jax.random.randint(s, (n * m,), 2, 9)

  u, r = jax.lax.map(draw, jnp.arange(k))
  np.testing.assert_array_equal(steps._from_micro(u, n), want_u)  # pylint: disable=protected-access
  np.testing.assert_array_equal(steps._from_micro(r, n), want_r)  # pylint: disable=protected-access
  # A plain draw of micro-batch size from the same key differs: the impl matters.
  assert not np.array_equal(jax.random.uniform(explore, (n * m,)), u[0])


def test_accum_split_is_per_device_and_inverts():
  x = jnp.arange(2 * 4 * 3)
  micro = steps._to_micro(x, 2, 4)  # pylint: disable=protected-access
  # Micro-batch 1 = rows 3..5 of device 0's slice (0..11) and of device 1's (12..23).
  np.testing.assert_array_equal(micro[1], [3, 4, 5, 15, 16, 17])
  np.testing.assert_array_equal(steps._from_micro(micro, 2), x)  # pylint: disable=protected-access


def test_accum_with_ema_and_one_segment():
  """EMA updated once per step; M = 1 (no exploration, no Q-continue target)."""
  ref = _run(1, [("data", 1)], devices=jax.devices()[:1], ema_rate=0.9, halt_max_steps=1)
  _assert_same(ref, _run(4, [("data", 1)], devices=jax.devices()[:1], ema_rate=0.9,
                         halt_max_steps=1), explores=False)


def test_accum_bad_values_name_the_fix():
  cfg = tiny_config()
  mesh = sharding.make_mesh([("data", -1)])  # 8 devices: 4 rows each
  with pytest.raises(ValueError, match=r"grad_accum_steps=3 must divide the per-device "
                     r"batch 4 .*use one of \[1, 2, 4\]"):
    steps.build_train_step(cfg, opt_config(), 10, B, mesh, grad_accum_steps=3)
  with pytest.raises(ValueError, match="positive integer"):
    steps.build_train_step(cfg, opt_config(), 10, B, mesh, grad_accum_steps=0)
