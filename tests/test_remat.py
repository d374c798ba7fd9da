"""Rematerialisation (`config.model.remat`): same gradients, less memory.

Every policy of `layers.REMAT_POLICIES` must give the gradients of "none" (it
only changes what the backward pass recomputes), keep the parameter tree, and
"blocks" / "dots" must lower the compiled temporaries of the train step where
activations dominate (compile only: `launch/compile_check.py` in a
subprocess, whose memory-minimising XLA:CPU schedule needs its own process).
"""
# pylint: disable=invalid-name
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax import state as state_lib, steps
from hrm_jax.models import act, hrm, layers
from test_train_step import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
B = 8


def _grads(remat, **kw):
  cfg = tiny_config(remat=remat, **kw)
  model = hrm.HRMInner(cfg)
  state = state_lib.init_state(model, __import__("optax").identity(), jax.random.key(0))
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, cfg.vocab_size, (B, cfg.seq_len)).astype(np.int32)
  batch = {"inputs": inputs, "labels": inputs.copy(),
           "puzzle_identifiers": rng.integers(0, 4, (B,)).astype(np.int32)}
  carry = act.reset_halted(act.initial_carry(cfg, B), batch, state.buffers["H_init"],
                           state.buffers["L_init"])
  rows_BxE = jax.random.normal(jax.random.key(2), (B, cfg.puzzle_emb_ndim))
  loss_fn = lambda p, r: steps._segment_loss(  # pylint: disable=protected-access
      p, r, carry, jax.random.key(3), model=model, buffers=state.buffers,
      global_batch_size=B)[0]
  loss, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(state.params, rows_BxE)
  return state.params, loss, grads


@pytest.mark.parametrize("pos_encodings", ["rope", "learned"])
def test_remat_policies_give_the_same_gradients(pos_encodings):
  params, loss, grads = _grads("none", pos_encodings=pos_encodings, H_layers=2, L_layers=2)
  flat_ref = jax.tree_util.tree_flatten_with_path(grads)[0]
  for remat in sorted(set(layers.REMAT_POLICIES) - {"none"}):
    other_params, other_loss, other_grads = _grads(remat, pos_encodings=pos_encodings,
                                                   H_layers=2, L_layers=2)
    # Same parameter tree, same initial values: checkpoints stay compatible.
    assert jax.tree.structure(other_params) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other_params)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
    for (path, a), b in zip(flat_ref, jax.tree.leaves(other_grads)):
      rel = float(jnp.linalg.norm(b - a) / jnp.maximum(jnp.linalg.norm(a), 1e-30))
      assert rel < 1e-5, (remat, jax.tree_util.keystr(path), rel)
      assert float(jnp.linalg.norm(a)) > 0 or "q_head" in jax.tree_util.keystr(path)


def test_remat_bad_value_names_the_choices():
  with pytest.raises(ValueError, match=r"remat='everything'.*'blocks'.*'dots'.*'none'"):
    tiny_config(remat="everything")


def _temp_bytes(remat):
  """The compiled train step's temporaries for a config where activations
  dominate: 4 + 4 layers, 129 positions, batch 32, float32."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # compile_check sets the device count and scheduler
  result = subprocess.run(
      [sys.executable, str(REPO / "launch/compile_check.py"),
       "--config=experiments/maze.py:smoke", "--mesh=data:1", "--seq_len=128",
       "--vocab_size=6", "--num_puzzle_identifiers=4", "--config.batch_size=32",
       "--config.model.hidden_size=64", "--config.model.num_heads=4",
       "--config.model.puzzle_emb_ndim=64", "--config.model.H_layers=4",
       "--config.model.L_layers=4", "--config.model.H_cycles=2",
       f"--config.model.remat={remat}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["remat"] == remat
  return out["xla_temp_bytes"]


def test_remat_lowers_compiled_temporaries():
  none, blocks, dots = (_temp_bytes(r) for r in ("none", "blocks", "dots"))
  print(f"temp MiB: none {none / 2**20:.1f}, blocks {blocks / 2**20:.1f}, "
        f"dots {dots / 2**20:.1f}")
  assert blocks < 0.7 * none
  assert dots < 0.95 * none
