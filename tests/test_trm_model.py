"""TRM structure: parameter counts, scan == loop, the gradient boundary, halting,
config validation, the token-mixing block, FLOPs and the state-dict mapping."""
# pylint: disable=invalid-name
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity_util as pu
import trm_parity_util as tu
from hrm_jax import losses, models, torch_names
from hrm_jax.models import act, layers, trm

PREFIX = "_orig_mod.model."


def param_count(**fields) -> int:
  cfg = trm.TRMConfig(num_puzzle_identifiers=1, **fields)
  shapes = jax.eval_shape(lambda k: trm.init_variables(trm.TRMInner(cfg), k),
                          jax.random.key(0))
  return models.count_params(shapes["params"])


@pytest.mark.parametrize("fields,expected", [
    (dict(vocab_size=11, seq_len=81, mlp_t=True, pos_encodings="none"), 5_028_866),
    (dict(vocab_size=11, seq_len=81), 6_828_034),    # Sudoku-Att
    (dict(vocab_size=6, seq_len=900), 6_822_914),    # Maze-Hard 30x30
    (dict(vocab_size=12, seq_len=900), 6_829_058),   # ARC-AGI
    (dict(vocab_size=6, seq_len=900, mlp_t=True, pos_encodings="none"), 18_795_522),
])
def test_paper_parameter_counts(fields, expected):
  """Spec §1.7 (the original's `num_params`: buffers and the puzzle table excluded)."""
  assert param_count(**fields) == expected


def test_parameter_tree_has_one_network():
  cfg = tu.config_from_fixture(tu.load_fixture("mlp"))
  shapes = jax.eval_shape(lambda k: trm.init_variables(trm.TRMInner(cfg), k),
                          jax.random.key(0))
  params, buffers = shapes["params"], shapes["buffers"]
  assert set(params) == {"embed_tokens", "L_level", "lm_head", "q_head"}
  assert set(buffers) == {"H_init", "L_init"}
  block = params["L_level"]["layers_0"]
  assert set(block) == {"mlp_t", "mlp"}  # no attention weights with mlp_t
  # Token mixing over L = 16 + 4 = 20 positions, inner width swiglu_width(20, 4) = 256.
  assert block["mlp_t"]["gate_up_proj"]["kernel"].shape == (20, 512)
  assert block["mlp_t"]["down_proj"]["kernel"].shape == (256, 20)
  assert layers.swiglu_width(97, 4) == 512 and layers.swiglu_width(916, 4) == 2560


def test_initialisation():
  cfg = trm.TRMConfig(seq_len=9, vocab_size=7, num_puzzle_identifiers=3, puzzle_emb_ndim=32,
                      puzzle_emb_len=3, hidden_size=32, num_heads=2, L_layers=1,
                      pos_encodings="learned")
  variables = jax.jit(lambda k: trm.init_variables(trm.TRMInner(cfg), k))(
      jax.random.key(1))
  params, buffers = variables["params"], variables["buffers"]
  np.testing.assert_array_equal(params["q_head"]["kernel"], 0.0)
  np.testing.assert_array_equal(params["q_head"]["bias"], -5.0)
  assert buffers["H_init"].dtype == jnp.bfloat16 and buffers["H_init"].shape == (32,)
  assert not np.array_equal(buffers["H_init"], buffers["L_init"])
  assert params["embed_pos"]["embedding"].shape == (12, 32)  # L = 9 + 3
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.fixture(scope="module", params=["att", "mlp"])
def fixture_setup(request):
  return pu.fixture_setup(request.param, tu)


def test_scan_and_python_loop_agree(fixture_setup):
  _, cfg, variables, table, batch = fixture_setup
  results = {}
  for scan in (True, False):
    c = dataclasses.replace(cfg, scan=scan)
    results[scan] = tu.train_act_step(c, variables, table, act.initial_carry(c, 4), batch)
  (loss_s, aux_s, grads_s), (loss_l, aux_l, grads_l) = results[True], results[False]
  np.testing.assert_allclose(loss_s, loss_l, rtol=1e-6)
  assert tu.rel_err(aux_s[2]["logits"], aux_l[2]["logits"]) < 1e-5
  assert tu.rel_err(aux_s[1].z_H_BxLxD, aux_l[1].z_H_BxLxD) < 1e-5
  assert tu.rel_err(aux_s[1].z_L_BxLxD, aux_l[1].z_L_BxLxD) < 1e-5
  for gs, gl in zip(jax.tree.leaves(grads_s[:2]), jax.tree.leaves(grads_l[:2])):
    assert tu.rel_err(gs, gl) < 1e-4


def _probe_loss(logits_BxSxV, q_halt_B):
  """A scalar that depends on every logit differently (so no gradient cancels)."""
  weights = jnp.sin(jnp.arange(logits_BxSxV.size, dtype=jnp.float32)).reshape(
      logits_BxSxV.shape)
  return jnp.sum(weights * logits_BxSxV) + jnp.sum(q_halt_B)


def _manual_cycles(model, variables, z_H, z_L, x, num_cycles, n):
  """Cycles written out with the model's own update methods, no stop_gradient."""
  for _ in range(num_cycles):
    for _ in range(n):
      z_L = model.apply(variables, z_L, z_H, x, method=trm.TRMInner.L_update)
    z_H = model.apply(variables, z_H, z_L, method=trm.TRMInner.H_update)
  return z_H, z_L


def test_gradient_boundary(fixture_setup):
  """Weights get gradient from the last cycle only; the incoming carry none.

  Expected: run the first T-1 cycles by hand, then a one-cycle segment (H_cycles=1)
  from there. Contrast: backprop through all T cycles (what the boundary prevents)
  gives a clearly different gradient, so the comparison can fail.
  """
  _, cfg, variables, table, batch = fixture_setup
  model = trm.TRMInner(cfg)
  inputs, rows = batch["inputs"], table[batch["puzzle_identifiers"]]
  T, n = cfg.H_cycles, cfg.L_cycles
  assert T == 2
  B, L, D = inputs.shape[0], cfg.num_positions, cfg.hidden_size
  z_H0 = jnp.broadcast_to(variables["buffers"]["H_init"], (B, L, D))
  z_L0 = jnp.broadcast_to(variables["buffers"]["L_init"], (B, L, D))

  def ours(params, z_H, z_L, config=cfg):
    v = {"params": params, "buffers": variables["buffers"]}
    _, logits, q_halt, _ = trm.segment(trm.TRMInner(config), v, z_H, z_L, inputs, rows)
    return _probe_loss(logits, q_halt)

  grads, carry_grad_H, carry_grad_L = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(
      variables["params"], z_H0, z_L0)
  assert float(jnp.abs(carry_grad_H).max()) == 0.0
  assert float(jnp.abs(carry_grad_L).max()) == 0.0

  x = model.apply(variables, inputs, rows, method=trm.TRMInner.embed_input)
  z_H1, z_L1 = jax.jit(_manual_cycles, static_argnums=(0, 5, 6))(
      model, variables, z_H0, z_L0, x, T - 1, n)
  one_cycle = dataclasses.replace(cfg, H_cycles=1)
  expected = jax.jit(jax.grad(lambda p, z_H, z_L: ours(p, z_H, z_L, one_cycle)))(
      variables["params"], z_H1, z_L1)

  def full_bptt(params):
    v = {"params": params, "buffers": variables["buffers"]}
    x = model.apply(v, inputs, rows, method=trm.TRMInner.embed_input)
    z_H, _ = _manual_cycles(model, v, z_H0, z_L0, x, T, n)
    logits, q_halt, _ = model.apply(v, z_H, method=trm.TRMInner.heads)
    return _probe_loss(logits, q_halt)

  bptt = jax.jit(jax.grad(full_bptt))(variables["params"])
  flat = lambda tree: jnp.concatenate([g.ravel() for g in jax.tree.leaves(tree)])
  assert tu.rel_err(flat(grads), flat(expected)) < 1e-5
  assert tu.rel_err(flat(bptt), flat(expected)) > 1e-2
  # Same values forward: the boundary changes gradients only.
  np.testing.assert_allclose(jax.jit(ours)(variables["params"], z_H0, z_L0),
                             jax.jit(full_bptt)(variables["params"]), rtol=1e-5)


def test_halting_rules():
  """TRM halts on q_halt > 0 (not q_halt > q_continue), in training and, when asked,
  at evaluation; with no_ACT_continue=False it runs HRM's bootstrapped target."""
  fx = tu.load_fixture("att")
  cfg = tu.config_from_fixture(fx)
  variables, table = tu.variables_from_fixture(fx, cfg)
  batch = tu.batch_from_fixture(fx)
  model = trm.TRMInner(cfg)
  carry = act.reset_halted(act.initial_carry(cfg, 4), batch,
                           variables["buffers"]["H_init"], variables["buffers"]["L_init"])
  rows = table[carry.puzzle_identifiers_B]
  new, out = act.act_step(model, variables, carry, rows, None, training=False,
                          adaptive_halting=True)
  q_halt, q_continue = np.asarray(out["q_halt_logits"]), np.asarray(out["q_continue_logits"])
  # Row 0 has 0 < q_halt < q_continue: halts under TRM's rule, not under HRM's.
  assert 0 < q_halt[0] < q_continue[0]
  np.testing.assert_array_equal(np.asarray(new.halted_B), q_halt > 0)
  new, _ = act.act_step(model, variables, carry, rows, None, training=False)
  assert not np.any(np.asarray(new.halted_B))  # evaluation: run all segments
  hrm_style = dataclasses.replace(cfg, no_ACT_continue=False)
  new, out = act.act_step(trm.TRMInner(hrm_style), variables, carry, rows,
                          jax.random.key(0), training=True)
  np.testing.assert_array_equal(np.asarray(new.halted_B), q_halt > q_continue)
  assert out["target_q_continue"].shape == (4,)


def test_bfloat16_runs_with_float32_q_logits():
  fx = tu.load_fixture("mlp")
  cfg = tu.config_from_fixture(fx, forward_dtype="bfloat16")
  variables, table = tu.variables_from_fixture(fx, cfg)
  loss, (_, carry, outputs, _), (grads, _, _) = tu.train_act_step(
      cfg, variables, table, act.initial_carry(cfg, 4), tu.batch_from_fixture(fx))
  assert outputs["logits"].dtype == jnp.bfloat16
  assert outputs["q_halt_logits"].dtype == jnp.float32
  assert carry.z_H_BxLxD.dtype == jnp.bfloat16
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  # Loose: bf16 rounding grows through the recurrence; a misplaced cast is O(1).
  assert tu.rel_err(loss, fx["train/loss"]) < 5e-2


def test_token_mixing_block_refuses_another_sequence_length():
  cfg = tu.config_from_fixture(tu.load_fixture("mlp"))
  model = trm.TRMInner(cfg)
  variables = trm.init_variables(model, jax.random.key(0))
  L, D = cfg.num_positions, cfg.hidden_size
  z = jnp.zeros((2, L, D), cfg.dtype)
  assert model.apply(variables, z, z, method=trm.TRMInner.H_update).shape == (2, L, D)
  z_short = jnp.zeros((2, L - 1, D), cfg.dtype)
  with pytest.raises(ValueError, match=r"built for 20 positions but got a sequence of 19"):
    model.apply(variables, z_short, z_short, method=trm.TRMInner.H_update)


def test_token_mixing_block_normalises_over_the_sequence():
  """mlp_t: residual + RMSNorm over L (per channel), then the channel MLP + RMSNorm
  over D; checked against the formula written out in NumPy."""
  B, L, D, eps = 2, 6, 8, 1e-5
  block = layers.PostNormBlock(num_heads=1, expansion=2.0, rms_norm_eps=eps, mlp_t=True,
                               num_positions=L)
  h = jax.random.normal(jax.random.key(0), (B, L, D))
  variables = block.init(jax.random.key(1), h, None)
  p = jax.tree.map(np.asarray, variables["params"])

  def swiglu(x, q):
    gate, up = np.split(x @ q["gate_up_proj"]["kernel"], 2, axis=-1)
    return (gate / (1 + np.exp(-gate)) * up) @ q["down_proj"]["kernel"]

  def rms(x):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)

  x = np.asarray(h).transpose(0, 2, 1)  # [B, D, L]
  x = rms(x + swiglu(x, p["mlp_t"])).transpose(0, 2, 1)
  expected = rms(x + swiglu(x, p["mlp"]))
  np.testing.assert_allclose(block.apply(variables, h, None), expected, rtol=1e-5,
                             atol=1e-5)


BASE = dict(seq_len=4, vocab_size=5, num_puzzle_identifiers=2, puzzle_emb_ndim=16,
            puzzle_emb_len=1, hidden_size=16, num_heads=2)


@pytest.mark.parametrize("overrides,message", [
    (dict(L_cycles=0), r"L_cycles=0 must be >= 1"),
    (dict(H_cycles=0), r"H_cycles=0 must be >= 1"),
    (dict(puzzle_emb_len=-1), r"puzzle_emb_len=-1 must be >= 0"),
    (dict(puzzle_emb_ndim=0), r"puzzle_emb_ndim=0 .* set puzzle_emb_len=0 too"),
    (dict(puzzle_emb_len=0), r"puzzle_emb_len=0 .* set puzzle_emb_len=1"),
    (dict(puzzle_emb_ndim=40, puzzle_emb_len=2), r"raise puzzle_emb_len to >= 3"),
    (dict(pos_encodings="alibi"), r"pos_encodings='alibi'"),
    (dict(mlp_t=True), r"mlp_t=True.*pos_encodings='none'"),
    (dict(num_heads=3), r"not divisible by num_heads=3"),
    (dict(hidden_size=6, num_heads=2, puzzle_emb_ndim=6), r"even head dim"),
    (dict(expansion=0.0), r"expansion=0.0 must be > 0"),
    (dict(halt_exploration_prob=1.5), r"halt_exploration_prob=1.5"),
    (dict(loss_type="mse"), r"loss_type='mse'"),
    (dict(forward_dtype="int8"), r"forward_dtype='int8'"),
    (dict(forward_dtype="bf16"), r"forward_dtype='bf16'"),
    (dict(attention_impl="flash"), r"attention_impl='flash'"),
])
def test_config_rejects_bad_values(overrides, message):
  with pytest.raises(ValueError, match=message):
    trm.TRMConfig(**{**BASE, **overrides})


def test_config_accepts_the_edge_cases():
  trm.TRMConfig(**{**BASE, "puzzle_emb_ndim": 0, "puzzle_emb_len": 0})  # no puzzle emb
  trm.TRMConfig(**{**BASE, "mlp_t": True, "pos_encodings": "none", "num_heads": 3})
  cfg = trm.TRMConfig(**{**BASE, "puzzle_emb_ndim": 0, "puzzle_emb_len": 0})
  variables = trm.init_variables(trm.TRMInner(cfg), jax.random.key(0))
  carry = act.reset_halted(act.initial_carry(cfg, 2), {
      "inputs": jnp.ones((2, 4), jnp.int32), "labels": jnp.ones((2, 4), jnp.int32),
      "puzzle_identifiers": jnp.zeros((2,), jnp.int32)},
                           variables["buffers"]["H_init"], variables["buffers"]["L_init"])
  step = jax.jit(lambda v, c: act.act_step(trm.TRMInner(cfg), v, c, jnp.zeros((2, 0)),
                                            jax.random.key(0), training=True))
  new, outputs = step(variables, carry)
  assert outputs["logits"].shape == (2, 4, 5) and new.z_H_BxLxD.shape == (2, 4, 16)
  assert np.isfinite(float(losses.act_loss(outputs, new)[0]))


def test_train_step_flops_match_xla_cost_analysis():
  """The analytic count against XLA's own count of the compiled gradient (Python loops:
  XLA counts a while-loop body once). Non-matmul work makes XLA's slightly higher."""
  for extra in (dict(), dict(mlp_t=True, pos_encodings="none")):
    cfg = trm.TRMConfig(seq_len=32, vocab_size=10, num_puzzle_identifiers=3,
                        puzzle_emb_ndim=256, puzzle_emb_len=2, hidden_size=256,
                        num_heads=4, H_cycles=3, L_cycles=2, forward_dtype="float32",
                        scan=False, halt_exploration_prob=0.0, **extra)
    flops = pu.compiled_grad_flops(trm.TRMInner(cfg), cfg, 2, 256)
    ratio = flops / trm.train_step_flops(cfg, 2)
    assert 1.0 <= ratio < 1.03, (extra, ratio)


@pytest.mark.parametrize("name", ["att", "mlp"])
def test_released_state_dict_maps_onto_our_tree(name):
  """A checkpoint as `torch.save` of the compiled loss head names it."""
  fx = tu.load_fixture(name)
  cfg = tu.config_from_fixture(fx)
  state = {PREFIX + k: v for k, v in tu.torch_state(fx).items()}
  assert any(".mlp_t." in k for k in state) == (name == "mlp")
  assert not any("H_level" in k for k in state)
  converted = torch_names.torch_state_to_variables(state)
  expected = jax.eval_shape(lambda: trm.init_variables(trm.TRMInner(cfg),
                                                       jax.random.key(0)))
  for item in ("params", "buffers"):
    have = jax.tree.map(np.shape, converted[item])
    want = jax.tree.map(lambda s: tuple(s.shape), expected[item])
    assert have == want, item
  assert converted["puzzle_emb"].shape == (cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim)
  # Values land transposed where PyTorch is [out, in].
  gate_up = "inner.L_level.layers.1.mlp_t.gate_up_proj.weight" if name == "mlp" else \
      "inner.L_level.layers.1.self_attn.qkv_proj.weight"
  np.testing.assert_array_equal(tu.torch_layout(converted["params"], gate_up),
                                fx["param/" + gate_up])
