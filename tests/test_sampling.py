"""Test-time compute: K sampled trajectories in one rollout, the selection rules,
the answer checkers and the evaluation that reports them (hrm_jax/sampling.py)."""
# pylint: disable=invalid-name
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrm_jax import checkpoint, losses, models, sampling, state as state_lib, steps, train
from hrm_jax.data import maze, puzzles, sudoku
from hrm_jax.evaluators import exact_match
from hrm_jax.models import act, hrm, trm

B = 6


def tiny(family):
  common = dict(seq_len=8, vocab_size=6, num_puzzle_identifiers=4, puzzle_emb_ndim=32,
                hidden_size=32, num_heads=2, halt_max_steps=3, forward_dtype="float32")
  if family == "hrm":
    return hrm.HRMConfig(H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, **common)
  return trm.TRMConfig(H_cycles=2, L_cycles=2, L_layers=1, puzzle_emb_len=1, **common)


def setup(family, seed=0):
  cfg = tiny(family)
  model = models.build(cfg)
  weights = state_lib.init_state(model, optax.identity(), jax.random.key(seed)).eval_weights()
  # A non-trivial Q head, so that q_halt differs between rows and samples.
  params = jax.tree.map(lambda x: x, weights.params)
  params["q_head"]["kernel"] = 0.3 * jax.random.normal(
      jax.random.key(7), params["q_head"]["kernel"].shape)
  weights = weights.replace(params=params)
  rng = np.random.default_rng(seed)
  inputs = rng.integers(1, cfg.vocab_size, (B, cfg.seq_len)).astype(np.int32)
  labels = inputs.copy()
  labels[0] = puzzles.IGNORE_LABEL_ID  # a row without labels is not evaluated
  batch = {"inputs": jnp.asarray(inputs), "labels": jnp.asarray(labels),
           "puzzle_identifiers": jnp.asarray(rng.integers(0, 4, (B,)), jnp.int32)}
  return model, weights, batch


# ---- The evaluation before sampling existed (main @ f14b73a), kept verbatim as
# the reference that K = 1, sigma = 0 must reproduce bit for bit.


def _rollout_before_sampling(model, variables, puzzle_emb_PxE, batch, *, halt_max_steps,
                             adaptive_halting=False, keep_trajectory=False):
  cfg = model.config
  Bn = batch["inputs"].shape[0]
  carry = act.reset_halted(act.initial_carry(cfg, Bn), batch,
                           *act.initial_states(model, variables))
  rows_BxE = puzzle_emb_PxE[carry.puzzle_identifiers_B]
  step = functools.partial(act.act_step, model, variables, rng=None, training=False,
                           adaptive_halting=adaptive_halting,
                           halt_max_steps=halt_max_steps)

  def segment_body(loop, _):
    carry, outputs, done_B = loop
    new_carry, new_outputs = step(carry, rows_BxE)
    keep = lambda new, old: jnp.where(done_B.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)
    new_carry = jax.tree.map(keep, new_carry, carry)
    new_outputs = jax.tree.map(keep, new_outputs, outputs)
    done_B = done_B | new_carry.halted_B
    prediction_BxS = jnp.argmax(new_outputs["logits"], axis=-1).astype(jnp.int32)
    return (new_carry, new_outputs, done_B), (prediction_BxS if keep_trajectory else None)

  carry, outputs = step(carry, rows_BxE)
  first_prediction = jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)
  (carry, outputs, _), trajectory = jax.lax.scan(
      segment_body, (carry, outputs, carry.halted_B), length=halt_max_steps - 1)
  carry = carry.replace(halted_B=jnp.ones_like(carry.halted_B))
  if keep_trajectory:
    trajectory = jnp.concatenate([first_prediction[None], trajectory], 0)
  return carry, outputs, trajectory


def _eval_step_before_sampling(weights, batch, *, model, halt_max_steps,
                               adaptive_halting=False):
  carry, outputs, _ = _rollout_before_sampling(
      model, weights.variables(), weights.puzzle_emb, batch,
      halt_max_steps=halt_max_steps, adaptive_halting=adaptive_halting)
  loss_sum, metric_sums = losses.act_loss(outputs, carry, model.config.loss_type)
  row_outputs = {"predictions": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32),
                 "q_halt_logits": outputs["q_halt_logits"], "steps": carry.steps_B}
  return dict(metric_sums, loss=loss_sum), row_outputs


@pytest.mark.parametrize("family", ["hrm", "trm"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_one_sample_without_noise_is_todays_evaluation_bit_for_bit(family, adaptive):
  model, weights, batch = setup(family)
  before = jax.jit(functools.partial(_eval_step_before_sampling, model=model,
                                     halt_max_steps=4, adaptive_halting=adaptive))
  now = steps.build_eval_step(model, 4, adaptive, num_samples=1, latent_noise=0.0)
  want = jax.device_get(before(weights, batch))
  got = jax.device_get(now(weights, batch, jax.random.key(3)))
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  # The rollout itself, with its trajectory.
  ref = jax.jit(functools.partial(_rollout_before_sampling, model, halt_max_steps=4,
                                  adaptive_halting=adaptive, keep_trajectory=True))
  new = jax.jit(functools.partial(act.rollout, model, halt_max_steps=4,
                                  adaptive_halting=adaptive, keep_trajectory=True,
                                  num_samples=1, latent_noise=0.0))
  args = (weights.variables(), weights.puzzle_emb, batch)
  for a, b in zip(jax.tree.leaves(jax.device_get(ref(*args))),
                  jax.tree.leaves(jax.device_get(new(*args)))):
    np.testing.assert_array_equal(a, b)


def _sampled(model, weights, batch, K, sigma, seed):
  fn = jax.jit(functools.partial(act.rollout, model, halt_max_steps=3, num_samples=K,
                                 latent_noise=sigma, keep_trajectory=True))
  carry, outputs, trajectory = jax.device_get(
      fn(weights.variables(), weights.puzzle_emb, batch, rng=jax.random.key(seed)))
  return carry, outputs, trajectory


@pytest.mark.parametrize("family", ["hrm", "trm"])
def test_samples_differ_across_k_and_repeat_for_a_seed(family):
  model, weights, batch = setup(family)
  K = 4
  carry, outputs, trajectory = _sampled(model, weights, batch, K, 0.5, seed=1)
  assert outputs["logits"].shape[0] == B * K and trajectory.shape == (3, B * K, 8)
  # Row b's samples sit at b*K .. b*K+K-1 and keep row b's example.
  np.testing.assert_array_equal(carry.inputs_BxS, np.repeat(batch["inputs"], K, 0))
  logits = sampling.split_samples(outputs["logits"], K)
  for b in range(B):
    for j in range(1, K):
      assert not np.allclose(logits[b, 0], logits[b, j]), (b, j)
  q = sampling.split_samples(outputs["q_halt_logits"], K)
  assert np.all(np.ptp(q, axis=1) > 0)
  # The same seed: the same samples, bit for bit; another seed: others.
  _, again, again_trajectory = _sampled(model, weights, batch, K, 0.5, seed=1)
  np.testing.assert_array_equal(outputs["logits"], again["logits"])
  np.testing.assert_array_equal(trajectory, again_trajectory)
  _, other, _ = _sampled(model, weights, batch, K, 0.5, seed=2)
  assert not np.allclose(outputs["logits"], other["logits"])
  # Without noise the K copies are the one plain trajectory.
  _, plain, _ = _sampled(model, weights, batch, 1, 0.0, seed=0)
  _, copies, _ = _sampled(model, weights, batch, K, 0.0, seed=0)
  for j in range(K):
    np.testing.assert_allclose(sampling.split_samples(copies["logits"], K)[:, j],
                               plain["logits"], rtol=1e-5, atol=1e-5)


def test_noise_needs_a_key_and_options_are_checked():
  model, weights, batch = setup("hrm")
  with pytest.raises(ValueError, match="needs a key"):
    act.rollout(model, weights.variables(), weights.puzzle_emb, batch, halt_max_steps=2,
                latent_noise=0.1)
  with pytest.raises(ValueError, match=r"config.eval.num_samples=0"):
    steps.build_eval_step(model, 2, num_samples=0)
  with pytest.raises(ValueError, match=r"config.eval.latent_noise=-1"):
    steps.build_eval_step(model, 2, latent_noise=-1.0)
  with pytest.raises(ValueError, match=r"config.eval.select='best'.*'q_halt', 'vote'"):
    steps.build_eval_step(model, 2, select="best")
  with pytest.raises(ValueError, match=r"arc puzzles have none"):
    sampling.check_family("checker", "arc", None)


# ---- Selection rules.


def test_q_halt_vote_and_checker_rules():
  # Row 0: answers A, B, B, C; row 1: A, A, B, B (a tie of two votes each).
  A, Bv, C = [1, 1], [2, 2], [3, 3]
  preds = np.array([[A, Bv, Bv, C], [A, A, Bv, Bv]], np.int32)
  q = np.array([[5.0, 1.0, 2.0, 0.0], [0.0, 1.0, 3.0, -1.0]], np.float32)
  np.testing.assert_array_equal(sampling.by_q_halt(q), [0, 2])
  np.testing.assert_array_equal(sampling.votes(preds), [[1, 2, 2, 1], [2, 2, 2, 2]])
  # Row 0: B wins 2 votes to 1 (its best member: sample 2); row 1: the tie goes
  # to the highest q_halt among the tied (sample 2, answer B).
  np.testing.assert_array_equal(sampling.by_vote(preds, q), [2, 2])
  accepted = np.array([[False, True, False, True], [False, False, False, False]])
  choice, unsure = sampling.by_checker(accepted, q)
  np.testing.assert_array_equal(choice, [1, 2])  # row 1: none accepted -> q_halt
  np.testing.assert_array_equal(unsure, [False, True])
  np.testing.assert_array_equal(sampling.choose("checker", preds, q)[0], [0, 2])
  labels = np.array([Bv, Bv], np.int32)
  sums = jax.device_get(sampling.sample_metric_sums(preds, q, labels))
  assert sums == {"exact_q_halt": 1.0, "exact_vote": 2.0, "exact_oracle": 2.0,
                  "exact_mean_sample": 0.5 + 0.5, "distinct_answers": 3.0 + 2.0}
  checked = sampling.checker_metric_sums(accepted, preds, q, labels)
  assert checked == {"exact_checker": 2.0, "checker_unsure": 1.0}  # row 1 by q_halt: right


@pytest.mark.parametrize("select", ["q_halt", "vote", "checker"])
def test_eval_step_reports_every_rule_and_the_chosen_one(select):
  model, weights, batch = setup("hrm")
  K = 5
  fn = steps.build_eval_step(model, 3, num_samples=K, latent_noise=0.7, select=select)
  sums, rows = jax.device_get(fn(weights, batch, jax.random.key(0)))
  preds, q = rows["sample_predictions"], rows["sample_q_halt_logits"]
  assert preds.shape == (B, K, 8) and q.shape == (B, K)
  rule = "q_halt" if select == "checker" else select  # checker: on host
  choice = np.asarray(sampling.choose(rule, preds, q)[0])
  np.testing.assert_array_equal(rows["predictions"], preds[np.arange(B), choice])
  np.testing.assert_array_equal(rows["q_halt_logits"], q[np.arange(B), choice])
  labels = np.asarray(batch["labels"])
  exact = np.asarray(sampling.exact_samples(preds, labels))[1:]  # row 0 has no labels
  assert sums["count"] == B - 1
  assert sums["exact_oracle"] == exact.any(-1).sum()
  assert sums["exact_accuracy"] == exact[np.arange(B - 1), choice[1:]].sum()
  assert sums["exact_accuracy"] == sums[f"exact_{rule}"]
  assert sums["exact_mean_sample"] == pytest.approx(exact.mean(-1).sum())
  assert 1.0 * (B - 1) <= sums["distinct_answers"] <= K * (B - 1) + 1e-4


def test_exact_match_evaluator_applies_the_checker_on_rows():
  cfg = {"num_samples": 2, "select": "checker"}
  evaluator = exact_match.Evaluator(None, cfg, None)
  assert evaluator.needs_rows
  assert not exact_match.Evaluator(None, {"num_samples": 1}, None).needs_rows
  labels = np.array([[2, 2], [3, 3]], np.int32)
  rows = {"sample_predictions": np.array([[[1, 1], [2, 2]], [[3, 3], [1, 1]]]),
          "sample_q_halt_logits": np.array([[3.0, 0.0], [0.0, 1.0]]),
          "predictions": np.array([[1, 1], [1, 1]]), "q_halt_logits": np.array([3.0, 1.0]),
          "labels": labels, "sample_accepted": np.array([[False, True], [False, False]])}
  device = {"count": 2.0, "exact_accuracy": 0.0, "exact_q_halt": 0.0}
  evaluator.add(device, rows)
  out = evaluator.result()
  # Row 0: the checker picks the accepted right answer; row 1: none accepted, the
  # q_halt fallback is wrong and the row is unsure.
  assert out["exact_checker"] == out["exact_accuracy"] == 0.5
  assert out["checker_unsure"] == 0.5 and out["exact_q_halt"] == 0.0


# ---- The answer checkers of the puzzle families.


def test_sudoku_checker_accepts_true_solutions_and_rejects_corrupted_ones():
  rng = np.random.default_rng(0)
  for n, blanks in ((4, 8), (6, 16), (9, 0)):
    q, a, _ = sudoku.generate(n, 4 if n < 9 else 2, seed=3, tag="check", num_blanks=blanks)
    for board, solution in zip(q, a):
      inputs, truth = sudoku.encode(board), sudoku.encode(solution)
      assert sudoku.check_answer(inputs, truth) is None
      blank = rng.choice(np.flatnonzero(board.reshape(-1) == 0))
      wrong = truth.copy()
      wrong[blank] = (truth[blank] - 2 + 1) % n + 2  # another digit in a blank cell
      assert "not a permutation" in sudoku.check_answer(inputs, wrong)
      given = rng.choice(np.flatnonzero(board.reshape(-1) != 0))
      changed_given = truth.copy()
      changed_given[given] = (truth[given] - 2 + 1) % n + 2
      assert sudoku.check_answer(inputs, changed_given) is not None
      swapped = solution.copy()  # a valid grid, but not this puzzle's givens
      swapped[[0, 1]] = swapped[[1, 0]]
      if np.any((board != 0) & (board != swapped)):
        assert "contradicts a given" in sudoku.check_answer(inputs, sudoku.encode(swapped))
      blank_left = truth.copy()
      blank_left[blank] = 1  # the blank token: not an answer
      assert "not digits" in sudoku.check_answer(inputs, blank_left)


def test_maze_checker_accepts_true_paths_and_rejects_broken_ones():
  inputs, labels, _ = maze.generate(9, 5, 12, 0.05, seed=2, tag="check")
  for x, y in zip(inputs, labels):
    assert maze.check_answer(x, y) is None
    path = np.flatnonzero(y == maze.PATH)
    broken = y.copy()
    broken[path[len(path) // 2]] = maze.OPEN  # a gap in the path
    assert "do not connect S to G" in maze.check_answer(x, broken)
    walls = np.flatnonzero(x == maze.WALL)
    through_wall = y.copy()
    through_wall[walls[len(walls) // 2]] = maze.PATH  # a path cell on a wall
    assert "differ from the maze" in maze.check_answer(x, through_wall)
    padded = y.copy()
    padded[0] = 0  # PAD
    assert "PAD" in maze.check_answer(x, padded)


# ---- The trainer's evaluation with samples.


def test_trainer_reports_every_rule_with_the_checker(tmp_path):
  from experiments import sudoku as sudoku_exp  # pylint: disable=import-outside-toplevel
  config = sudoku_exp.get_config("smoke")
  config.data.data_dir = str(tmp_path / "data")
  config.total_steps = 2
  config.eval.every_steps = 2
  config.eval.num_samples = 3
  config.eval.latent_noise = 0.5
  config.eval.select = "checker"
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  out = result.eval_metrics
  for key in ("exact_q_halt", "exact_vote", "exact_checker", "exact_oracle",
              "exact_mean_sample", "distinct_answers", "checker_unsure"):
    assert key in out, sorted(out)
  assert out["exact_accuracy"] == out["exact_checker"]
  assert out["exact_oracle"] >= max(out["exact_q_halt"], out["exact_vote"],
                                    out["exact_checker"])
  assert 0.0 <= out["checker_unsure"] <= 1.0 and 1.0 <= out["distinct_answers"] <= 3.0
  assert out["count"] == 32  # every test board once, not K times


def test_checker_on_a_family_without_one_fails_before_training(tmp_path):
  from experiments import arc as arc_exp  # pylint: disable=import-outside-toplevel
  config = arc_exp.get_config("smoke")
  config.data.data_dir = str(tmp_path / "data")
  config.eval.select = "checker"
  with pytest.raises(ValueError, match=r"select='checker' needs a rule check.*'vote'"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert checkpoint.Checkpointer(tmp_path / "run", every_steps=2).latest_step() is None
