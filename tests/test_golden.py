"""Golden values of three full train steps of the smoke config (nanodo style).

The parity tests pin the model against PyTorch; this pins the *assembly* of the
step the trainer compiles (`steps.build_train_step`): the ACT reset, sparse
SignSGD rows, AdamATan2, the LR logged, the metric sums and their reduction.
The numbers were recorded with the step as it was before the architecture
refactor (3 steps, float32, exploration 0.5, seeded batches) and reproduced
bit for bit after it.
"""
import jax
import numpy as np
import pytest

from experiments import sudoku
from hrm_jax import data, metrics, models, sharding, steps

WARNING = (" after three train steps of the smoke config has changed. If you did not "
           "mean to change behaviour (e.g. a refactoring), this is a bug. If you did, "
           "update the golden numbers in tests/test_golden.py and say why in BUILD_NOTES.")

GOLDEN_METRICS = [
    {"accuracy": 0.0, "count": 0.0, "exact_accuracy": 0.0, "grad_norm": 1.9573659,
     "lm_loss": 33.7058067, "loss": 34.0809669, "lr": 5e-05, "param_norm": 37.6422615,
     "puzzle_emb_lr": 5e-05, "q_continue_loss": 0.6428737, "q_halt_accuracy": 0.0,
     "q_halt_loss": 0.1074456, "steps": 0.0, "update_norm": 0.0121176},
    {"accuracy": 3.3125, "count": 16.0, "exact_accuracy": 0.0, "grad_norm": 1.9317758,
     "lm_loss": 31.8079491, "loss": 32.1828842, "lr": 0.0001, "param_norm": 37.6385002,
     "puzzle_emb_lr": 0.0001, "q_continue_loss": 0.6425214, "q_halt_accuracy": 16.0,
     "q_halt_loss": 0.1073463, "steps": 32.0, "update_norm": 0.0191591},
    {"accuracy": 0.0, "count": 0.0, "exact_accuracy": 0.0, "grad_norm": 1.8934048,
     "lm_loss": 32.9633026, "loss": 33.3386765, "lr": 0.0001, "param_norm": 37.6347466,
     "puzzle_emb_lr": 0.0001, "q_continue_loss": 0.6436175, "q_halt_accuracy": 0.0,
     "q_halt_loss": 0.107132, "steps": 0.0, "update_norm": 0.0185439},
]
GOLDEN_PARAM_ABS_SUMS = {"H_level": 3408.1420195650026, "L_level": 3427.7225557078964,
                         "embed_tokens": 27.96181543741841, "lm_head": 26.264476872980595,
                         "q_head": 10.00798676539489}
GOLDEN_PUZZLE_EMB_ABS_SUM = 0.014498879394523101
# Reduced over the three steps as the trainer logs them (metrics.Sums).
GOLDEN_TRAIN_LOG = {"accuracy": 3.3125 / 16, "steps": 2.0, "halted_per_step": 16 / 3,
                    "loss": (34.0809669 + 32.1828842 + 33.3386765) / (16 * 3),
                    "grad_norm": (1.9573659 + 1.9317758 + 1.8934048) / 3}


@pytest.fixture(scope="module")
def three_steps():
  config = sudoku.get_config("smoke")
  config.model.halt_exploration_prob = 0.5
  shape = data.shape(config.data)
  cfg = models.make_config(config.model, data.DatasetShape(shape.vocab_size,
                                                           shape.seq_len, 3))
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  program = steps.build_train_step(cfg, config.opt, 10, config.batch_size, mesh)
  state, carry = program.init_state(jax.random.key(config.seed)), program.init_carry()
  rng = np.random.default_rng(0)
  step_metrics = []
  for _ in range(3):
    shape_BxS = (config.batch_size, cfg.seq_len)
    batch = {"inputs": rng.integers(1, cfg.vocab_size, shape_BxS).astype(np.int32),
             "labels": rng.integers(1, cfg.vocab_size, shape_BxS).astype(np.int32),
             "puzzle_identifiers": rng.integers(0, 3, (config.batch_size,)).astype(np.int32)}
    state, carry, m = program.step(state, carry, batch, jax.random.key(7))
    step_metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
  return config, jax.device_get(state), jax.device_get(carry), step_metrics


def test_step_metrics(three_steps):
  _, _, _, step_metrics = three_steps
  for i, (got, want) in enumerate(zip(step_metrics, GOLDEN_METRICS)):
    assert set(got) == set(want), f"step {i + 1}: metric names" + WARNING
    for key, value in want.items():
      np.testing.assert_allclose(got[key], value, rtol=2e-6, atol=1e-7,
                                 err_msg=f"step {i + 1}: {key}" + WARNING)


def test_parameters_and_carry(three_steps):
  _, state, carry, _ = three_steps
  for name, want in GOLDEN_PARAM_ABS_SUMS.items():
    got = sum(float(np.abs(np.asarray(x, np.float64)).sum())
              for x in jax.tree.leaves(state.params[name]))
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"sum |{name}|" + WARNING)
  np.testing.assert_allclose(float(np.abs(np.asarray(state.puzzle_emb, np.float64)).sum()),
                             GOLDEN_PUZZLE_EMB_ABS_SUM, rtol=1e-5,
                             err_msg="sum |puzzle_emb|" + WARNING)
  assert int(state.step) == 3
  np.testing.assert_array_equal(carry.steps_B, 1, err_msg="carry steps" + WARNING)
  np.testing.assert_array_equal(carry.halted_B, False, err_msg="carry halted" + WARNING)


def test_reduction_of_the_logged_metrics(three_steps):
  config, _, _, step_metrics = three_steps
  sums = metrics.Sums()
  for m in step_metrics:
    sums.add(m)
  logged = sums.train_result(config.batch_size)
  for key, want in GOLDEN_TRAIN_LOG.items():
    np.testing.assert_allclose(logged[key], want, rtol=1e-6, err_msg=key + WARNING)


def test_a_metric_without_a_reduction_is_an_error():
  sums = metrics.Sums()
  with pytest.raises(KeyError, match="weight_norm.*REDUCTIONS"):
    sums.add({"weight_norm": 1.0})
