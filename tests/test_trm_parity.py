"""Our TRM against outputs, gradients and optimiser steps of the original PyTorch TRM.

Fixtures: tests/testdata/trm_torch_parity_{att,mlp}.npz (float32, see the
fixtures README): `att` = attention blocks + RoPE, `mlp` = token-mixing
SwiGLU (mlp_t) + no positions; both T=2, n=3, P=4 prefix tokens.
"""
# pylint: disable=invalid-name
import json

import jax
import numpy as np
import pytest

import trm_parity_util as tu
from hrm_jax.models import act

FORWARD_TOL = 1e-4
GRAD_TOL = 1e-3
OPT_TOL = 1e-5
EMA_TOL = 1e-6
EMA_MOVEMENT_TOL = 3e-2
# The mlp fixture's eval trajectory is chaotic in float32 (the original's own
# numbers drift from exact arithmetic by 6e-5 at eval/2 and 6e-4 at eval/3).
EVAL_TOL = {"att": (FORWARD_TOL,) * 4, "mlp": (FORWARD_TOL, FORWARD_TOL, 1e-3, 1e-2)}
EMA_EVAL_TOL = {"att": FORWARD_TOL, "mlp": 1e-2}
CARRY_FIELDS = ("inputs", "labels", "puzzle_identifiers")


@pytest.fixture(scope="module", params=["att", "mlp"])
def port(request):
  """Everything the fixture holds, computed by our port once per fixture."""
  name = request.param
  fx = tu.load_fixture(name)
  cfg = tu.config_from_fixture(fx)
  variables, table = tu.variables_from_fixture(fx, cfg)
  batch, batch2 = tu.batch_from_fixture(fx), tu.batch_from_fixture(fx, "batch2")
  B = batch["inputs"].shape[0]
  train = tu.train_act_step(cfg, variables, table, act.initial_carry(cfg, B), batch)
  new_carry = train[1][1]
  train2 = tu.train_act_step(cfg, variables, table, new_carry, batch2)
  evals = tu.eval_steps(cfg, variables, table, batch, num_steps=cfg.halt_max_steps)
  initial, opt_steps = tu.run_optimizer_steps(fx, cfg, variables, table, [batch, batch2])
  final = opt_steps[-1][0]
  ema_evals = tu.eval_steps(cfg, {"params": final["ema"], "buffers": final["buffers"]},
                            final["puzzle_emb"], batch, num_steps=cfg.halt_max_steps)
  return dict(name=name, fx=fx, cfg=cfg, train=train, train2=train2, evals=evals,
              initial=initial, opt_steps=opt_steps, ema_evals=ema_evals)


def check_training_step(fx, section, step):
  """Outputs, carry, halting, loss, metrics and gradients of one training ACT step."""
  loss, (_, carry, outputs, metrics), (param_grads, row_grads, _) = step
  prefix = f"{section}/"
  for key in ("logits", "q_halt_logits", "q_continue_logits"):
    assert tu.rel_err(outputs[key], fx[prefix + key]) < FORWARD_TOL, key
  # No Q-continue target: TRM has no second forward pass.
  assert "target_q_continue" not in outputs
  assert tu.rel_err(carry.z_H_BxLxD, fx[prefix + "z_H"]) < FORWARD_TOL
  assert tu.rel_err(carry.z_L_BxLxD, fx[prefix + "z_L"]) < FORWARD_TOL
  np.testing.assert_array_equal(np.asarray(carry.halted_B), fx[prefix + "halted"])
  np.testing.assert_array_equal(np.asarray(carry.steps_B), fx[prefix + "steps"])
  assert tu.rel_err(loss, fx[prefix + "loss"]) < FORWARD_TOL
  assert set(metrics) == {k[len(prefix + "metric/"):] for k in fx
                          if k.startswith(prefix + "metric/")}
  for key, value in metrics.items():
    np.testing.assert_allclose(float(value), fx[f"{prefix}metric/{key}"],
                               rtol=FORWARD_TOL, atol=1e-6, err_msg=key)
  grad_prefix = "grad/" if section == "train" else f"{section}/grad/"
  names = [k for k in fx if k.startswith(grad_prefix + "inner.")]
  assert len(names) == 12
  for name in names:
    g = tu.torch_layout(param_grads, name[len(grad_prefix):])
    assert g.shape == fx[name].shape, name
    assert tu.rel_err(g, fx[name]) < GRAD_TOL, name
  assert tu.rel_err(row_grads, fx[grad_prefix + "puzzle_emb_local"]) < GRAD_TOL
  # Zero by design: the q_continue logit feeds no loss term.
  q_grad = tu.torch_layout(param_grads, "inner.q_head.weight")
  assert np.all(q_grad[1] == 0.0) and np.any(q_grad[0] != 0.0)


def test_training_step(port):
  check_training_step(port["fx"], "train", port["train"])


def test_second_training_step_keeps_the_carry(port):
  """Rows 0 and 2 halted at step 1 and restart on batch2; 1 and 3 continue."""
  fx = port["fx"]
  reset_carry = port["train2"][1][0]
  for key, value in zip(CARRY_FIELDS, (reset_carry.inputs_BxS, reset_carry.labels_BxS,
                                       reset_carry.puzzle_identifiers_B)):
    np.testing.assert_array_equal(np.asarray(value), fx[f"train2/current_{key}"], key)
  check_training_step(fx, "train2", port["train2"])


def test_evaluation_steps(port):
  fx, tols = port["fx"], EVAL_TOL[port["name"]]
  assert len(port["evals"]) == 4
  for k, (carry, outputs, loss, metrics) in enumerate(port["evals"]):
    tol = tols[k]
    for key in ("logits", "q_halt_logits", "q_continue_logits"):
      assert tu.rel_err(outputs[key], fx[f"eval/{k}/{key}"]) < tol, (k, key)
    assert tu.rel_err(carry.z_H_BxLxD, fx[f"eval/{k}/z_H"]) < tol, k
    assert tu.rel_err(loss, fx[f"eval/{k}/loss"]) < tol, k
    # No Q halting at evaluation: every row runs halt_max_steps segments.
    np.testing.assert_array_equal(np.asarray(carry.halted_B), fx[f"eval/{k}/halted"])
    np.testing.assert_array_equal(np.asarray(carry.steps_B), fx[f"eval/{k}/steps"])
  for key, value in port["evals"][-1][3].items():
    np.testing.assert_allclose(float(value), fx[f"eval/3/metric/{key}"], rtol=tols[3],
                               atol=1e-6, err_msg=key)


def test_optimizer_steps(port):
  fx = port["fx"]
  for s, (state, carry, info) in enumerate(port["opt_steps"], start=1):
    prefix = f"opt/{s}/"
    assert tu.rel_err(info["loss"], fx[prefix + "loss"]) < FORWARD_TOL, s
    np.testing.assert_allclose(float(info["lr"]), fx[prefix + "lr"], rtol=1e-6)
    np.testing.assert_allclose(float(info["puzzle_emb_lr"]), fx[prefix + "puzzle_emb_lr"],
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(carry.halted_B), fx[prefix + "halted"])
    names = [k[len(prefix):] for k in fx if k.startswith(prefix + "inner.")
             and k != prefix + "inner.puzzle_emb.weights"]
    assert len(names) == 6
    for name in names:
      assert tu.rel_err(tu.torch_layout(state["params"], name),
                        fx[prefix + name]) < OPT_TOL, (s, name)
    table = np.asarray(state["puzzle_emb"])
    assert tu.rel_err(table, fx[prefix + "inner.puzzle_emb.weights"]) < OPT_TOL, s
  # Only the rows the carry worked on were touched (SignSGD on the rows seen): at
  # step 2 the continuing rows keep batch's ids, so batch2's 4 and 5 stay as they were.
  initial_table = np.asarray(port["initial"]["puzzle_emb"])
  seen = {int(i) for _, carry, _ in port["opt_steps"]
          for i in np.asarray(carry.puzzle_identifiers_B)}
  assert seen == {0, 1, 2, 3, 6}
  for row in range(initial_table.shape[0]):
    changed = not np.array_equal(table[row], initial_table[row])
    assert changed == (row in seen), row


def test_ema_shadow(port):
  fx = port["fx"]
  final, initial = port["opt_steps"][-1][0], port["initial"]
  names = [k[len("ema/"):] for k in fx if k.startswith("ema/inner.")]
  assert len(names) == 6
  for name in names:
    shadow = tu.torch_layout(final["ema"], name)
    start = tu.torch_layout(initial["params"], name)
    assert tu.rel_err(shadow, fx["ema/" + name]) < EMA_TOL, name
    # Two steps move the shadow by ~2e-5: compare the movement itself too.
    assert tu.rel_err(shadow - start, fx["ema/" + name] - start) < EMA_MOVEMENT_TOL, name
  # The shadow covers exactly the trainable parameters (not the puzzle table or
  # buffers): one leaf of ours per name the original's EMAHelper covers.
  covered = {n[len("model."):] for n in json.loads(str(fx["ema/covered_names"]))}
  assert covered == {k[len("param/"):] for k in fx if k.startswith("param/")}
  for name in covered:
    assert tu.torch_layout(final["ema"], name).shape == fx["param/" + name].shape
  assert len(jax.tree.leaves(final["ema"])) == len(covered)


def test_ema_weights_evaluation(port):
  fx, tol = port["fx"], EMA_EVAL_TOL[port["name"]]
  carry, outputs, loss, _ = port["ema_evals"][-1]
  assert tu.rel_err(outputs["logits"], fx["ema_eval/logits"]) < tol
  assert tu.rel_err(outputs["q_halt_logits"], fx["ema_eval/q_halt_logits"]) < tol
  assert tu.rel_err(loss, fx["ema_eval/loss"]) < tol
  assert bool(np.all(np.asarray(carry.halted_B)))
