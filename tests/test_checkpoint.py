"""Tests of hrm_jax.checkpoint on 8 fake CPU devices."""
import os
import signal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from hrm_jax import checkpoint as ckpt_lib
from hrm_jax import preemption


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of concrete arrays."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


@pytest.fixture(scope="module")
def mesh():
  devices = np.array(jax.devices())
  assert devices.size == 8, "tests/conftest.py should force 8 CPU devices"
  return Mesh(devices, ("data",))


def _make_state(mesh, offset=0.0, rows=16):
  """Params sharded over 'data', an optax state (namedtuples) and a step."""
  params = {
      "w": jnp.arange(rows * 4, dtype=jnp.float32).reshape(rows, 4) + offset,
      "b": jnp.full((3,), offset, jnp.bfloat16),
  }
  shardings = {"w": NamedSharding(mesh, P("data")),
               "b": NamedSharding(mesh, P())}
  params = jax.device_put(params, shardings)
  opt_state = optax.adam(1e-3).init(params)
  return {"params": params, "opt": opt_state, "step": jnp.int32(offset)}


def _make_carry(mesh, offset=0.0):
  z = jnp.full((8, 2), offset, jnp.float32)
  halted = jnp.arange(8) % 2 == 0
  return jax.device_put({"z_H": z, "halted": halted},
                        NamedSharding(mesh, P("data")))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _config():
  config = ml_collections.ConfigDict()
  config.seed = 3
  config.opt = dict(lr=1e-4, betas=(0.9, 0.95))
  return config


def test_round_trip_sharded(tmp_path, mesh):
  state, carry = _make_state(mesh, 1.0), _make_carry(mesh, 2.0)
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=10)
  assert ckpt.restore_latest(abstract_like(state)) is None
  data_state = {"epoch": np.int64(1), "index": 7, "order": np.arange(3)}
  assert ckpt.save(10, state, carry, data_state, _config())
  ckpt.close()

  # A fresh Checkpointer, as after a restart, restoring into abstract targets
  # with shardings: params 'w' sharded, and the carry replicated this time.
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=10)
  assert ckpt.latest_step() == 10
  abstract_state = abstract_like(state)
  replicated = NamedSharding(mesh, P())
  abstract_carry = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      carry)
  step, got_state, got_carry, data_state = ckpt.restore_latest(
      abstract_state, abstract_carry)
  ckpt.close()
  assert step == 10
  _assert_trees_equal(got_state, state)
  _assert_trees_equal(got_carry, carry)
  assert data_state == {"epoch": 1, "index": 7, "order": [0, 1, 2]}
  assert got_state["params"]["w"].sharding.is_equivalent_to(
      NamedSharding(mesh, P("data")), 2)
  assert got_carry["z_H"].sharding.is_equivalent_to(replicated, 2)
  assert isinstance(got_state["opt"][0], optax.ScaleByAdamState)

  saved_config = ckpt_lib.Checkpointer.read_config(tmp_path)
  assert saved_config == {"seed": 3, "opt": {"lr": 1e-4, "betas": [0.9, 0.95]}}
  assert ckpt_lib.Checkpointer.read_config(tmp_path, step=10) == saved_config


def test_without_carry(tmp_path, mesh):
  state = _make_state(mesh)
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, async_save=False)
  ckpt.save(1, state, None, {}, None)
  step, _, carry, data_state = ckpt.restore_latest(
      abstract_like(state), abstract_like(_make_carry(mesh)))
  ckpt.close()
  assert (step, carry, data_state) == (1, None, {})


def test_interval_force_and_max_to_keep(tmp_path, mesh):
  state, carry = _make_state(mesh), _make_carry(mesh)
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=2, max_to_keep=2)
  saved = [ckpt.save(s, state, carry, {"s": s}, None) for s in range(1, 8)]
  assert saved == [False, True, False, True, False, True, False]
  assert ckpt.save(7, state, carry, {"s": 7}, None, force=True)
  assert not ckpt.save(7, state, carry, {"s": 7}, None, force=True)
  ckpt.close()
  assert ckpt.all_steps() == [6, 7]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == ["6", "7"]


def _truncate_files(directory):
  count = 0
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
      count += 1
  assert count > 0


# Tensorstore leaves a callback on orbax's closed event loop after the failed
# read; Python reports it as "unraisable". Harmless, and not ours to fix.
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damaged", ["state", "state/d"])
def test_corrupt_newest_falls_back(tmp_path, mesh, caplog, damaged):
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1)
  for s in (1, 2):
    ckpt.save(s, _make_state(mesh, s), _make_carry(mesh, s), {"s": s}, None)
  ckpt.close()
  # A save killed half-way through writing its array files.
  _truncate_files(tmp_path / "checkpoints" / "2" / damaged)

  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1)
  state = _make_state(mesh, 1)
  with caplog.at_level("WARNING"):
    step, got_state, _, data_state = ckpt.restore_latest(
        abstract_like(state))
  ckpt.close()
  assert step == 1 and data_state == {"s": 1}
  _assert_trees_equal(got_state, state)
  assert "step 2" in caplog.text and "falling back" in caplog.text


def _one_corrupt_checkpoint(tmp_path, mesh):
  """A workdir whose only checkpoint (step 1) is truncated; (its state, a Checkpointer)."""
  state = _make_state(mesh)
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, async_save=False)
  ckpt.save(1, state, None, {}, None)
  ckpt.close()
  _truncate_files(tmp_path / "checkpoints" / "1" / "state")
  return state, ckpt_lib.Checkpointer(tmp_path, every_steps=1)


def test_all_corrupt_raises(tmp_path, mesh):
  state, ckpt = _one_corrupt_checkpoint(tmp_path, mesh)
  with pytest.raises(RuntimeError, match="No readable checkpoint"):
    ckpt.restore_latest(abstract_like(state))
  ckpt.close()


def test_shape_mismatch_names_path_and_shapes(tmp_path, mesh):
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, async_save=False)
  ckpt.save(1, _make_state(mesh, rows=16), None, {}, None)
  ckpt.close()
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1)
  bigger = abstract_like(_make_state(mesh, rows=24))
  with pytest.raises(ckpt_lib.CheckpointMismatchError) as info:
    ckpt.restore_latest(bigger)
  ckpt.close()
  message = str(info.value)
  assert "state/params/w: checkpoint shape (16, 4) != target shape (24, 4)" in (
      message)
  # The Adam moments of w mismatch too, and are named by their paths.
  assert "state/opt/0/mu/w" in message and "state/opt/0/nu/w" in message
  assert "params/b" not in message


def test_tree_mismatch_names_missing_leaf(tmp_path, mesh):
  state = _make_state(mesh)
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, async_save=False)
  ckpt.save(1, state, None, {}, None)
  ckpt.close()
  target = abstract_like(state)
  target["params"]["extra"] = jax.ShapeDtypeStruct((2,), jnp.float32)
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1)
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match="state/params/extra: missing in checkpoint"):
    ckpt.restore_latest(target)
  ckpt.close()


def test_preemption_handler_records_sigterm():
  previous = signal.getsignal(signal.SIGTERM)
  reached = preemption.install()
  try:
    assert not reached()
    os.kill(os.getpid(), signal.SIGTERM)
    assert reached()  # Python runs the handler before the next bytecode.
  finally:
    reached.uninstall()
  # The handler that was there before (pytest's default) is back.
  assert signal.getsignal(signal.SIGTERM) == previous


def test_relative_workdir_is_made_absolute(tmp_path, monkeypatch):
  """Orbax refuses relative paths (and only says so inside the async save)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from hrm_jax import checkpoint  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoint.Checkpointer("relative/run", every_steps=1, async_save=True)
  assert ckpt.save(1, {"w": jnp.ones(3)}, None, {"pos": 1}, None, force=True)
  ckpt.close()
  assert (tmp_path / "relative/run/checkpoints/1").exists()
  assert str(checkpoint.absolute("gs://bucket/run")) == "gs://bucket/run"


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_newest_is_moved_aside_and_saved_again(tmp_path, mesh, caplog):
  """Issue 12: the unreadable step leaves orbax's listing (kept under
  checkpoints/corrupt/), so the run writes that step afresh instead of logging
  "already exists; not saving" forever."""
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, async_save=False)
  for s in (1, 2):
    ckpt.save(s, _make_state(mesh, s), None, {"s": s}, None)
  ckpt.close()
  _truncate_files(tmp_path / "checkpoints" / "2" / "state")

  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, async_save=False)
  with caplog.at_level("WARNING"):
    step, _, _, _ = ckpt.restore_latest(abstract_like(_make_state(mesh, 1)))
  assert step == 1 and ckpt.all_steps() == [1]
  [moved] = list((tmp_path / "checkpoints" / "corrupt").iterdir())
  assert moved.name.startswith("2-") and (moved / "state").is_dir()
  assert "Moved the unreadable checkpoint of step 2" in caplog.text
  # The resumed run reaches step 2 again and saves it.
  assert ckpt.save(2, _make_state(mesh, 7), None, {"s": 7}, None)
  ckpt.close()
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1)
  step, got_state, _, data_state = ckpt.restore_latest(abstract_like(_make_state(mesh)))
  ckpt.close()
  assert step == 2 and data_state == {"s": 7}
  _assert_trees_equal(got_state, _make_state(mesh, 7))
  assert moved.exists()  # kept for inspection


def test_all_corrupt_moves_nothing(tmp_path, mesh):
  state, ckpt = _one_corrupt_checkpoint(tmp_path, mesh)
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match=r"steps 1\).*nothing was moved"):
    ckpt.restore_latest(abstract_like(state))
  ckpt.close()
  assert (tmp_path / "checkpoints" / "1").is_dir()
  assert not (tmp_path / "checkpoints" / "corrupt").exists()


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
def test_restore_weights_refuses_a_corrupt_newest_step(tmp_path, mesh):
  """The tools load the newest step or say why not, naming it and the fix;
  they never answer from an older step silently."""
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, async_save=False)
  for s in (1, 2):
    ckpt.save(s, _make_state(mesh, s), None, {"s": s}, None)
  ckpt.close()
  _truncate_files(tmp_path / "checkpoints" / "2" / "state" / "d")
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as info:
    ckpt.restore_weights()
  message = str(info.value)
  assert "step 2" in message and "unreadable" in message
  assert "resumes from step 1" in message and "corrupt" in message
  step, weights = ckpt.restore_weights(step=1)  # asked for explicitly: fine
  ckpt.close()
  assert step == 1
  np.testing.assert_array_equal(weights["params"]["w"],
                                _make_state(mesh, 1)["params"]["w"])
  assert (tmp_path / "checkpoints" / "2").is_dir()  # the tools move nothing


def test_first_sigint_stops_at_a_step_boundary_the_second_aborts():
  """SIGINT is recorded like SIGTERM; after it, SIGINT's default action is
  back (a second Ctrl-C ends the process at once), and uninstall restores
  the handler from before."""
  previous = signal.getsignal(signal.SIGINT)
  reached = preemption.install()
  try:
    assert signal.getsignal(signal.SIGINT) not in (previous, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    assert reached() and reached.signal == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
  finally:
    reached.uninstall()
  assert signal.getsignal(signal.SIGINT) == previous


def test_sigterm_outside_the_loop_raises():
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.Interrupted) as info:
    with preemption.raise_on_sigterm():
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(1000):  # the handler runs between bytecodes
        pass
  assert info.value.exit_code == 128 + signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == previous
