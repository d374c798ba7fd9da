"""Tests of hrm_jax.optim against NumPy transcriptions of the reference."""
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import pytest

from hrm_jax import optim


def _reference_lr(step, base_lr, warmup, total, min_ratio):
  """`cosine_schedule_with_warmup_lr_lambda` of the reference, in Python."""
  if step < warmup:
    return base_lr * step / max(1, warmup)
  progress = (step - warmup) / max(1, total - warmup)
  return base_lr * (min_ratio + max(
      0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


@pytest.mark.parametrize("warmup,total,min_ratio", [
    (5, 20, 1.0),  # Reference default: warm-up then constant.
    (5, 20, 0.1),  # Cosine to 10%.
    (0, 10, 0.0),  # No warm-up.
    (8, 8, 0.5),  # total == warmup: no cosine phase.
    (8, 3, 0.5),  # total < warmup.
])
def test_lr_schedule_matches_reference(warmup, total, min_ratio):
  sched = optim.lr_schedule(2e-3, warmup, total, min_ratio)
  for count in range(total):  # The reference trains steps 1..total.
    want = _reference_lr(count + 1, 2e-3, warmup, total, min_ratio)
    np.testing.assert_allclose(float(sched(count)), want, rtol=1e-6,
                               err_msg=f"count={count}")


def test_lr_schedule_first_update_and_past_end():
  sched = optim.lr_schedule(1.0, 4, 10, min_ratio=0.0)
  assert float(sched(0)) == pytest.approx(0.25)  # Reference step 1 of W=4.
  assert float(sched(3)) == pytest.approx(1.0)
  # Past total_steps the LR holds at the floor instead of rising again.
  assert float(sched(9)) == pytest.approx(0.0, abs=1e-7)
  assert float(sched(15)) == pytest.approx(0.0, abs=1e-7)
  assert float(jax.jit(sched)(jnp.int32(1))) == pytest.approx(0.5)


def _numpy_adam_atan2(params, grads_seq, lrs, b1, b2, wd):
  """The reference AdamATan2 step, line by line, in float64 NumPy."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, (g, lr) in enumerate(zip(grads_seq, lrs), start=1):
    for k in p:
      p[k] = p[k] * (1 - lr * wd)
      m[k] = m[k] + (1 - b1) * (g[k] - m[k])
      v[k] = v[k] + (1 - b2) * (g[k]**2 - v[k])
      bias1 = 1 - b1**t
      bias2_sqrt = math.sqrt(1 - b2**t)
      p[k] = p[k] - (lr / bias1) * np.arctan2(m[k], np.sqrt(v[k]) / bias2_sqrt)
  return p


def test_adam_atan2_matches_numpy_reference():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32)}
  num_steps = 6
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32)
                for k, v in params.items()} for _ in range(num_steps)]
  sched = optim.lr_schedule(0.05, warmup_steps=3, total_steps=num_steps,
                            min_ratio=0.2)
  lrs = [float(sched(c)) for c in range(num_steps)]
  assert len(set(lrs)) == num_steps  # Non-constant schedule.
  b1, b2, wd = 0.9, 0.95, 0.3
  want = _numpy_adam_atan2(params, grads_seq, lrs, b1, b2, wd)

  tx = optim.adam_atan2(sched, b1=b1, b2=b2, weight_decay=wd)
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)

  @jax.jit
  def step(p, state, g):
    updates, state = tx.update(g, state, p)
    return optax.apply_updates(p, updates), state

  for g in grads_seq:
    p, state = step(p, state, jax.tree.map(jnp.asarray, g))
  assert int(state.count) == num_steps
  for k in params:
    assert p[k].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=2e-6, atol=1e-7)


def test_adam_atan2_state_is_fp32_for_bf16_params():
  p = {"w": jnp.ones((2, 2), jnp.bfloat16)}
  tx = optim.adam_atan2(1e-2, weight_decay=0.1)
  state = tx.init(p)
  assert state.mu["w"].dtype == jnp.float32
  assert state.nu["w"].dtype == jnp.float32
  updates, _ = tx.update({"w": jnp.ones((2, 2), jnp.bfloat16)}, state, p)
  assert updates["w"].dtype == jnp.bfloat16


def _numpy_sign_sgd(table, ids, grads, lr, wd):
  out = table.astype(np.float64).copy()
  for u in np.unique(ids):
    g = grads[ids == u].astype(np.float64).sum(0)
    out[u] = out[u] * (1 - lr * wd) - lr * np.sign(g)
  return out


def _sparse_problem():
  rng = np.random.default_rng(1)
  num_rows, emb, batch = 40, 6, 16
  table = rng.normal(size=(num_rows, emb)).astype(np.float32)
  # Duplicates on purpose: id 7 three times, id 3 twice.
  ids = np.array([7, 3, 7, 12, 0, 3, 7, 39, 21, 22, 23, 24, 25, 26, 27, 28],
                 np.int32)
  assert ids.shape == (batch,)
  grads = rng.normal(size=(batch, emb)).astype(np.float32)
  # Make id 7's summed sign differ from every single row's sign in column 0.
  grads[[0, 2, 6], 0] = [1.0, 1.0, -5.0]
  return table, ids, grads


def test_sign_sgd_sparse_update_sums_duplicates_and_skips_other_rows():
  table, ids, grads = _sparse_problem()
  lr, wd = 0.01, 0.5
  got = np.asarray(
      jax.jit(optim.sign_sgd_sparse_update)(table, ids, grads, lr, wd))
  want = _numpy_sign_sgd(table, ids, grads, lr, wd)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # Summed before the sign: column 0 of id 7 moves up (sum -3 < 0).
  assert got[7, 0] == pytest.approx(table[7, 0] * (1 - lr * wd) + lr)
  untouched = np.setdiff1d(np.arange(table.shape[0]), ids)
  assert untouched.size > 0
  np.testing.assert_array_equal(got[untouched], table[untouched])  # Bitwise.


def test_sign_sgd_sparse_update_sharded_equals_single_device():
  devices = np.array(jax.devices())
  assert devices.size == 8, "tests/conftest.py should force 8 CPU devices"
  mesh = Mesh(devices, ("data",))
  table, ids, grads = _sparse_problem()
  table_sharding = NamedSharding(mesh, P("data", None))
  update = jax.jit(optim.sign_sgd_sparse_update, out_shardings=table_sharding)
  single = np.asarray(
      jax.jit(optim.sign_sgd_sparse_update)(
          jax.device_put(table, jax.devices()[0]),
          jax.device_put(ids, jax.devices()[0]),
          jax.device_put(grads, jax.devices()[0]), 0.01, 0.5))
  sharded = update(
      jax.device_put(table, table_sharding),
      jax.device_put(ids, NamedSharding(mesh, P("data"))),
      jax.device_put(grads, NamedSharding(mesh, P("data", None))),
      jnp.float32(0.01), 0.5)
  assert sharded.sharding.is_equivalent_to(table_sharding, 2)
  np.testing.assert_array_equal(np.asarray(sharded), single)


def test_build_optimizers():
  cfg = ml_collections.ConfigDict(dict(
      lr=1e-4, lr_min_ratio=1.0, lr_warmup_steps=10, beta1=0.9, beta2=0.95,
      weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1))
  optimizers = optim.build_optimizers(cfg, total_steps=100)
  dense_tx, emb_lr = optimizers.dense_tx, optimizers.puzzle_emb_lr
  assert float(optimizers.dense_lr(0)) == pytest.approx(1e-5)
  assert float(emb_lr(0)) == pytest.approx(1e-3)
  assert float(emb_lr(50)) == pytest.approx(1e-2)
  p = {"w": jnp.ones((3,))}
  updates, state = dense_tx.update({"w": jnp.ones((3,))}, dense_tx.init(p), p)
  # First update (t=1, lr = 1e-4 * 1/10): m = 0.1 g, v = 0.05 g^2, so
  # atan2(m, sqrt(v) / sqrt(1 - b2)) = atan2(0.1, 1) for g = 1.
  lr = 1e-5
  want = -lr * 0.1 - lr / 0.1 * math.atan2(0.1, 1.0)
  np.testing.assert_allclose(np.asarray(updates["w"]), want, rtol=1e-6)
  assert int(state.count) == 1
