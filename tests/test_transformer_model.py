"""The transformer baseline (TRM repo `transformers_baseline.py`): shapes, gradients,
parameter counts, halting, config validation and the state-dict names.

There is no PyTorch fixture for this model; the blocks, embeddings and heads are the
ones the HRM and TRM parity tests check against the originals.
"""
# pylint: disable=invalid-name
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity_util as pu
from hrm_jax import losses, models, torch_names
from hrm_jax.models import act, transformer

SMALL = dict(seq_len=6, vocab_size=7, num_puzzle_identifiers=3, puzzle_emb_ndim=24,
             H_layers=2, hidden_size=16, num_heads=2, forward_dtype="float32",
             halt_max_steps=4, halt_exploration_prob=0.0)


def setup(**overrides):
  cfg = transformer.TransformerConfig(**{**SMALL, **overrides})
  model = transformer.TransformerInner(cfg)
  variables = jax.jit(lambda k: transformer.init_variables(model, k))(jax.random.key(0))
  # Random non-zero weights everywhere (the Q head starts at 0 / -5 otherwise).
  leaves, treedef = jax.tree.flatten(variables["params"])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, l.shape)
                                        for k, l in zip(keys, leaves)])
  variables = {"params": params, "buffers": variables["buffers"]}
  B = 3
  batch = {"inputs": jax.random.randint(jax.random.key(2), (B, cfg.seq_len), 1, 7),
           "labels": jax.random.randint(jax.random.key(3), (B, cfg.seq_len), 1, 7),
           "puzzle_identifiers": jnp.array([0, 2, 1], jnp.int32)}
  table = jax.random.normal(jax.random.key(4), (3, cfg.puzzle_emb_ndim))
  return cfg, model, variables, batch, table


def reset(model, variables, carry, batch):
  H_init, L_init = model.apply(variables, method=transformer.TransformerInner.initial_states)
  return act.reset_halted(carry, batch, H_init, L_init)


def test_segment_shapes_and_untouched_z_L():
  cfg, model, variables, batch, table = setup()
  assert cfg.puzzle_emb_len == 2 and cfg.num_positions == 8  # ceil(24 / 16)
  B, L, D = 3, cfg.num_positions, cfg.hidden_size
  rows = table[batch["puzzle_identifiers"]]
  z_H = jnp.ones((B, L, D))
  for z_L in (jnp.full((B, L, D), 7.0), None):
    (new_H, new_L), logits, q_halt, q_continue = transformer.segment(
        model, variables, z_H, z_L, batch["inputs"], rows)
    assert new_L is z_L
    assert new_H.shape == (B, L, D)
    assert logits.shape == (B, cfg.seq_len, cfg.vocab_size)
    assert q_halt.shape == q_continue.shape == (B,) and q_halt.dtype == jnp.float32
  # The ACT carry keeps the common layout: z_L stays the zeros a reset wrote.
  carry = reset(model, variables, act.initial_carry(cfg, B), batch)
  for _ in range(2):
    carry, _ = act.act_step(model, variables, carry, rows, None, training=False)
    carry = reset(model, variables, carry, batch)
  assert carry.z_L_BxLxD.shape == (B, L, D)
  assert float(jnp.abs(carry.z_L_BxLxD).max()) == 0.0


@pytest.mark.parametrize("pos_encodings", ["rope", "learned"])
def test_every_parameter_gets_gradient(pos_encodings):
  cfg, model, variables, batch, table = setup(pos_encodings=pos_encodings)
  carry = reset(model, variables, act.initial_carry(cfg, 3), batch)
  rows = table[carry.puzzle_identifiers_B]

  @jax.jit
  def grads(params, rows, carry):
    def loss_fn(params, rows, carry):
      new, outputs = act.act_step(model, {"params": params, "buffers": variables["buffers"]},
                                  carry, rows, jax.random.key(0), training=True)
      assert "target_q_continue" not in outputs  # the reference never asks for it
      return losses.act_loss(outputs, new, cfg.loss_type)[0]
    return jax.grad(loss_fn, argnums=(0, 1, 2), allow_int=True)(params, rows, carry)

  param_grads, row_grads, carry_grads = grads(variables["params"], rows, carry)
  flat = jax.tree_util.tree_flatten_with_path(param_grads)[0]
  assert len(flat) == 2 * 4 + 4 + (pos_encodings == "learned")
  for path, g in flat:
    assert float(jnp.abs(g).max()) > 0.0, jax.tree_util.keystr(path)
  assert float(jnp.abs(row_grads).max()) > 0.0
  # Zero by design: no Q-continue loss, and the carry enters as a constant.
  np.testing.assert_array_equal(param_grads["q_head"]["kernel"][:, 1], 0.0)
  np.testing.assert_array_equal(param_grads["q_head"]["bias"][1], 0.0)
  assert float(jnp.abs(carry_grads.z_H_BxLxD).max()) == 0.0


@pytest.mark.parametrize("fields", [
    dict(),
    dict(pos_encodings="learned", puzzle_emb_ndim=0),
    dict(num_heads=3, hidden_size=16, pos_encodings="learned"),  # K 5, width 15
])
def test_param_count_formula(fields):
  cfg = transformer.TransformerConfig(**{**SMALL, **fields})
  shapes = jax.eval_shape(lambda k: transformer.init_variables(
      transformer.TransformerInner(cfg), k), jax.random.key(0))
  assert models.count_params(shapes["params"]) == transformer.param_count(cfg)


def test_reference_yaml_config():
  """`config/arch/transformers_baseline.yaml` on ARC: 8 layers, hidden 512, 12 heads
  (head dim 42: q, k, v and o_proj's input are 504 wide), expansion 4 (inner 1536).
  Per block 3*504*512 + 504*512 + 3*1536*512 = 3,391,488; x8 + 2*12*512 + 1,026."""
  cfg = transformer.TransformerConfig(seq_len=900, vocab_size=12, num_puzzle_identifiers=1,
                                      num_heads=12)
  model = transformer.TransformerInner(cfg)
  shapes = jax.eval_shape(lambda k: transformer.init_variables(model, k), jax.random.key(0))
  block = shapes["params"]["H_level"]["layers_0"]["self_attn"]
  assert block["qkv_proj"]["kernel"].shape == (512, 3 * 504)
  assert block["o_proj"]["kernel"].shape == (504, 512)
  assert models.count_params(shapes["params"]) == 27_145_218
  assert set(shapes["buffers"]) == {"H_init"}
  assert cfg.num_positions == 901  # one prefix token (ceil(512 / 512))


def test_heads_that_do_not_divide_the_width_run():
  """As the reference yaml's 12 heads on 512: K = 24 // 5 = 4, attention width 20."""
  cfg, model, variables, batch, table = setup(hidden_size=24, num_heads=5,
                                              puzzle_emb_ndim=24)
  assert cfg.head_dim == 4
  qkv = variables["params"]["H_level"]["layers_0"]["self_attn"]["qkv_proj"]["kernel"]
  assert qkv.shape == (24, 60)
  _, logits, _, _ = transformer.segment(model, variables, jnp.zeros((3, 7, 24)), None,
                                        batch["inputs"], table[batch["puzzle_identifiers"]])
  assert logits.shape == (3, 6, 7) and bool(jnp.all(jnp.isfinite(logits)))


def _halting(cfg, model, variables, batch, table, training, adaptive=False):
  carry = reset(model, variables, act.initial_carry(cfg, 3), batch)
  new, outputs = act.act_step(model, variables, carry, table[carry.puzzle_identifiers_B],
                              jax.random.key(0), training=training,
                              adaptive_halting=adaptive)
  q_rule = np.asarray(outputs["q_halt_logits"] > outputs["q_continue_logits"])
  return np.asarray(new.halted_B), q_rule


def test_halting_rules():
  cfg, model, variables, batch, table = setup()
  # Shift the halt bias so that exactly one of the three rows has q_halt < q_continue.
  _, _, q_halt, q_continue = transformer.segment(
      model, variables, jnp.broadcast_to(variables["buffers"]["H_init"], (3, 8, 16)),
      None, batch["inputs"], table[batch["puzzle_identifiers"]])
  diff = np.sort(np.asarray(q_halt - q_continue))
  q_head = variables["params"]["q_head"]
  q_head["bias"] = q_head["bias"].at[0].add(-(diff[0] + diff[1]) / 2)
  halted, q_rule = _halting(cfg, model, variables, batch, table, training=True)
  assert q_rule.sum() == 2
  np.testing.assert_array_equal(halted, q_rule)  # act_enabled: q_halt > q_continue
  halted, _ = _halting(cfg, model, variables, batch, table, training=False)
  assert not halted.any()  # act_inference=False: evaluation runs every segment
  halted, _ = _halting(cfg, model, variables, batch, table, training=False, adaptive=True)
  np.testing.assert_array_equal(halted, q_rule)
  for overrides, training, expected in ((dict(act_enabled=False), True, False),
                                        (dict(act_inference=True), False, True),
                                        (dict(act_enabled=False, act_inference=True),
                                         True, False)):
    c = transformer.TransformerConfig(**{**SMALL, **overrides})
    halted, q_rule = _halting(c, transformer.TransformerInner(c), variables, batch, table,
                              training=training)
    np.testing.assert_array_equal(halted, q_rule if expected else False)


@pytest.mark.parametrize("overrides,message", [
    (dict(H_layers=0), r"H_layers=0 must be >= 1"),
    (dict(puzzle_emb_ndim=-1), r"puzzle_emb_ndim=-1 must be >= 0"),
    (dict(num_heads=32), r"num_heads=32 > hidden_size=16"),
    (dict(pos_encodings="none"), r"pos_encodings='none': use 'rope' or 'learned'"),
    (dict(num_heads=3), r"even head dim, got hidden_size // num_heads = 5"),
    (dict(attention_impl="flash"), r"attention_impl='flash'"),
    (dict(attention_impl="cudnn", num_heads=4), r"multiple of 8, got .* = 4"),
    (dict(halt_exploration_prob=-0.1), r"halt_exploration_prob=-0.1"),
    (dict(loss_type="mse"), r"loss_type='mse'"),
])
def test_config_rejects_bad_values(overrides, message):
  with pytest.raises(ValueError, match=message):
    transformer.TransformerConfig(**{**SMALL, **overrides})


def _torch_names_of(params):
  """Our tree -> the original's state-dict names (inverse of torch_names)."""
  table = torch_names._DIRECT  # pylint: disable=protected-access
  direct = {path: (name, transpose) for name, (path, transpose) in table.items()}
  state = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(k.key for k in path)
    if keys in direct:
      name, transpose = direct[keys]
    else:
      level, layer, block, proj, _ = keys
      name = f"inner.{level}.layers.{layer[len('layers_'):]}.{block}.{proj}.weight"
      transpose = True
    state[name] = np.asarray(leaf).T if transpose else np.asarray(leaf)
  return state


def test_state_dict_names_map_back():
  """The baseline's names (H_level stack, H_init only) through the shared converter."""
  cfg, _, variables, _, table = setup()
  state = {"_orig_mod.model." + k: v for k, v in _torch_names_of(variables["params"]).items()}
  assert "_orig_mod.model.inner.H_level.layers.1.self_attn.qkv_proj.weight" in state
  state["_orig_mod.model.inner.H_init"] = np.asarray(variables["buffers"]["H_init"])
  state["_orig_mod.model.inner.puzzle_emb.weights"] = np.asarray(table)
  converted = torch_names.torch_state_to_variables(state)
  jax.tree.map(np.testing.assert_array_equal, converted["params"],
               jax.tree.map(np.asarray, variables["params"]))
  assert set(converted["buffers"]) == {"H_init"}
  assert converted["puzzle_emb"].shape == (3, cfg.puzzle_emb_ndim)
  del state["_orig_mod.model.inner.H_init"]
  with pytest.raises(KeyError, match=r"inner\.H_init"):
    torch_names.torch_state_to_variables(state)


def test_train_step_flops_match_xla_cost_analysis():
  cfg = transformer.TransformerConfig(seq_len=32, vocab_size=10, num_puzzle_identifiers=3,
                                      puzzle_emb_ndim=256, hidden_size=256, num_heads=4,
                                      H_layers=3, forward_dtype="float32",
                                      halt_exploration_prob=0.0)
  flops = pu.compiled_grad_flops(transformer.TransformerInner(cfg), cfg, 2, 256)
  assert 1.0 <= flops / transformer.train_step_flops(cfg, 2) < 1.03
