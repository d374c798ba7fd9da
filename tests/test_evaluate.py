"""Evaluation as its own command (hrm_jax/evaluate.py) and the test-time rules it
reports: first_halt, confidence, noise placements, NFE, the checker's metrics."""
# pylint: disable=invalid-name
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import env_util
from hrm_jax import evaluation, losses, models, sampling, state as state_lib, steps
from hrm_jax import workdir as workdir_lib
from hrm_jax.data import puzzles
from hrm_jax.evaluators import exact_match
from hrm_jax.models import act, hrm

B = 6


def _tiny():
  return hrm.HRMConfig(seq_len=8, vocab_size=6, num_puzzle_identifiers=4, puzzle_emb_ndim=32,
                       hidden_size=32, num_heads=2, halt_max_steps=3,
                       forward_dtype="float32", H_cycles=2, L_cycles=2, H_layers=1,
                       L_layers=1)


def _setup(seed=0):
  model = models.build(_tiny())
  weights = state_lib.init_state(model, optax.identity(), jax.random.key(seed)).eval_weights()
  params = jax.tree.map(lambda x: x, weights.params)
  # A Q head that halts some rows and not others.
  params["q_head"]["kernel"] = 0.5 * jax.random.normal(
      jax.random.key(7), params["q_head"]["kernel"].shape)
  weights = weights.replace(params=params)
  rng = np.random.default_rng(seed)
  inputs = rng.integers(1, 6, (B, 8)).astype(np.int32)
  labels = inputs.copy()
  labels[0] = puzzles.IGNORE_LABEL_ID  # not evaluated
  batch = {"inputs": jnp.asarray(inputs), "labels": jnp.asarray(labels),
           "puzzle_identifiers": jnp.asarray(rng.integers(0, 4, (B,)), jnp.int32)}
  return model, weights, batch


# ---- The rules, by hand.


def test_first_halt_takes_the_earliest_halt_and_breaks_ties_by_q_halt():
  halt = np.array([[3, 2, 2, 4], [5, 5, 5, 5], [1, 4, 4, 4]])
  q = np.array([[9.0, 0.1, 0.5, 7.0], [0.0, 2.0, 1.0, -1.0], [-3.0, 8.0, 8.0, 8.0]])
  # Row 0: samples 1, 2 halt first (segment 2); 2 has the higher q_halt. Row 1:
  # nobody halted (all 5 = M + 1): q_halt decides. Row 2: sample 0 halts first.
  np.testing.assert_array_equal(sampling.by_first_halt(halt, q), [2, 1, 0])
  preds = np.zeros((3, 4, 2), np.int32)
  assert int(sampling.choose("first_halt", preds, q, q_halt_step_BxK=halt)[0][0]) == 2
  with pytest.raises(ValueError, match="q_halt_step"):
    sampling.choose("first_halt", preds, q)


def test_confidence_is_the_mean_top1_probability_over_answer_cells():
  # One row, 3 positions; the last is padding (input 0) and must not count.
  logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.01, 0.01, 0.98]]]))
  inputs = np.array([[1, 2, puzzles.PAD_ID]])
  got = float(sampling.answer_confidence(logits, inputs)[0])
  assert got == pytest.approx((0.7 + 0.4) / 2, rel=1e-6)
  conf = np.array([[0.2, 0.9, 0.9, 0.1]])
  np.testing.assert_array_equal(sampling.by_confidence(conf), [1])  # first of the tied
  labels = np.array([[1, 1]])
  preds = np.array([[[0, 0], [1, 1], [0, 1], [1, 1]]])
  sums = jax.device_get(sampling.sample_metric_sums(
      preds, np.zeros((1, 4)), labels, q_halt_step_BxK=np.array([[2, 3, 1, 3]]),
      confidence_BxK=conf))
  assert sums["exact_confidence"] == 1.0  # sample 1 is right
  assert sums["exact_first_halt"] == 0.0  # sample 2 halts first, and is wrong


# ---- The eval step: every metric follows the chosen sample.


@pytest.mark.parametrize("select", ["first_halt", "confidence"])
def test_every_metric_follows_the_rules_sample(select):
  model, weights, batch = _setup()
  K = 4
  fn = steps.build_eval_step(model, 3, num_samples=K, latent_noise=0.8, select=select)
  sums, rows = jax.device_get(fn(weights, batch, jax.random.key(1)))
  halt, conf = rows["sample_q_halt_step"], rows["sample_confidence"]
  preds, q = rows["sample_predictions"], rows["sample_q_halt_logits"]
  assert halt.shape == conf.shape == (B, K) and halt.min() >= 1 and halt.max() <= 4
  choice = np.asarray(sampling.choose(select, preds, q, q_halt_step_BxK=halt,
                                      confidence_BxK=conf)[0])
  np.testing.assert_array_equal(rows["predictions"], preds[np.arange(B), choice])
  np.testing.assert_array_equal(rows["q_halt_logits"], q[np.arange(B), choice])
  exact = np.asarray(sampling.exact_samples(preds, np.asarray(batch["labels"])))[1:]
  assert sums["exact_accuracy"] == exact[np.arange(B - 1), choice[1:]].sum()
  assert sums["exact_accuracy"] == sums[f"exact_{select}"]
  assert sums["sample_steps"] == 3 * K * (B - 1)  # fixed halting: every sample runs 3


def test_the_checkers_pick_owns_every_metric():
  model, weights, batch = _setup()
  K = 3
  fn = steps.build_eval_step(model, 3, num_samples=K, latent_noise=0.8, select="checker")
  sums, rows = jax.device_get(fn(weights, batch, jax.random.key(2)))
  per = rows["sample_metrics"]  # every sample's metrics, [B, K] each
  assert set(per) >= {"accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "loss"}
  accepted = np.zeros((B, K), bool)
  accepted[:, 2] = True  # a "checker" that accepts sample 2 of every row
  evaluator = exact_match.Evaluator(None, {"num_samples": K, "select": "checker"}, None)
  host_rows = dict(rows, labels=np.asarray(batch["labels"]), sample_accepted=accepted)
  evaluator.add(sums, host_rows)
  out = evaluator.result()
  count = B - 1
  for name in ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
    assert out[name] == pytest.approx(per[name][:, 2].sum() / count), name
  assert out["loss"] == pytest.approx(per["loss"][:, 2].sum() / count, rel=1e-5)
  # The q_halt pick's loss differs from sample 2's on this batch (the test can fail).
  choice = np.argmax(rows["sample_q_halt_logits"], -1)
  assert not np.allclose(per["loss"][np.arange(B), choice].sum(), per["loss"][:, 2].sum())


def test_per_row_metrics_sum_to_the_batch_metrics():
  model, weights, batch = _setup()
  carry, outputs, _ = act.rollout(model, weights.variables(), weights.puzzle_emb, batch,
                                  halt_max_steps=3)
  loss, sums = losses.act_loss(outputs, carry, model.config.loss_type)
  per = steps._per_row_metrics(outputs, carry, model)  # pylint: disable=protected-access
  for name, value in sums.items():
    assert float(jnp.sum(per[name])) == pytest.approx(float(value), rel=1e-5), name
  assert float(jnp.sum(per["loss"])) == pytest.approx(float(loss), rel=1e-5)


# ---- Noise placements and NFE.


def test_noise_placements():
  model, weights, batch = _setup()

  def run(where, M, sigma=0.5):
    _, out, _ = jax.jit(lambda w: act.rollout(
        model, w.variables(), w.puzzle_emb, batch, halt_max_steps=M, latent_noise=sigma,
        rng=jax.random.key(3), noise_on=where))(weights)
    return np.asarray(out["logits"])

  clean = run("both", 2, sigma=0.0)
  # "init" is "both" on the first segment only.
  np.testing.assert_array_equal(run("init", 1), run("both", 1))
  assert not np.array_equal(run("init", 2), run("both", 2))
  assert not np.array_equal(run("init", 2), clean)
  # "z_L" leaves z_H alone: a third result.
  assert not np.array_equal(run("z_L", 2), run("both", 2))
  assert not np.array_equal(run("z_L", 2), clean)
  with pytest.raises(ValueError, match="noise_on"):
    run("z_H", 2)


@pytest.mark.parametrize("K,adaptive", [(1, False), (3, False), (3, True)])
def test_nfe_is_segments_times_calls_times_samples(K, adaptive):
  model, weights, batch = _setup()
  config = ml_collections.ConfigDict({
      "data": {"family": "sudoku"},
      "eval": {"halt_max_steps": 3, "adaptive_halting": adaptive, "num_samples": K,
               "latent_noise": 0.5, "noise_on": "both", "select": "q_halt",
               "type": "exact_match"}})
  eval_fn, _ = evaluation.build(config, model, None, None)
  sums, rows = jax.device_get(eval_fn(weights, batch, jax.random.key(0)))
  calls = 2 * (2 + 1)  # HRM: H_cycles x (L_cycles + 1)
  if not adaptive:
    assert sums["nfe"] == 3 * calls * K * (B - 1)
  else:
    assert sums["nfe"] == calls * sums.get("sample_steps", sums["steps"])
    assert sums["nfe"] < 3 * calls * K * (B - 1)  # some rows halted early


# ---- The command.


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("eval_run")
  env_util.train_smoke(workdir, tmp_path_factory.mktemp("data"), "sudoku.py:smoke")
  return workdir


@pytest.mark.slow
def test_evaluate_prints_the_table_and_writes_the_json(smoke_run):
  proc = env_util.run_module(
      "hrm_jax.evaluate", f"--workdir={smoke_run}", "--num_samples=1,2",
      "--select=q_halt,first_halt,confidence,checker", "--halting=fixed,adaptive",
      "--name=table")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0].split()[-4:] == ["exact", "oracle", "NFE", "puzzles/s"]
  assert len(lines) == 1 + 2 * 2 * 4 + 1  # settings x rules, then "Wrote ..."
  saved = json.loads((smoke_run / "eval" / "table.json").read_text())
  assert len(saved["rows"]) == 16 and len(saved["evaluations"]) == 4
  fixed_k2 = [r for r in saved["rows"] if r["num_samples"] == 2 and r["halting"] == "fixed"]
  model = workdir_lib.read_config(smoke_run).model
  calls = model.H_cycles * (model.L_cycles + 1)  # HRM's network calls per segment
  assert model.halt_max_steps == 2 and calls == 3  # the smoke HRM
  assert {r["nfe"] for r in fixed_k2} == {2 * calls * 2}  # M = 2 segments, K = 2
  assert {r["noise"] for r in fixed_k2} == {0.3}  # the default for K > 1
  for r in saved["rows"]:
    assert 0.0 <= r["accuracy"] <= r["oracle"] <= 1.0 and r["puzzles_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--select=best"], "--select=best: use one of"),
    (["--noise_on=z_H"], "--noise_on=z_H"),
    (["--config.data.no_such_field=1"], "has no field 'no_such_field'"),
    (["--config.data.board_size=6"], "Puzzle size does not match the model"),
    (["--aggregate=all_checkpoints"], "the sudoku evaluator does not vote"),
])
def test_evaluate_fails_in_one_line(smoke_run, args, message):
  proc = env_util.run_module("hrm_jax.evaluate", f"--workdir={smoke_run}", *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_evaluate_without_a_checkpoint_fails_in_one_line(tmp_path):
  proc = env_util.run_module("hrm_jax.evaluate", f"--workdir={tmp_path}")
  assert proc.returncode in (1, 2), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.count("error:") == 1 and str(tmp_path) in proc.stderr
  assert not os.path.exists(tmp_path / "eval")


@pytest.mark.slow
def test_evaluate_pools_arc_votes_over_every_checkpoint(tmp_path):
  workdir = tmp_path / "arc"
  env_util.train_smoke(workdir, tmp_path / "data", "arc.py:trm,smoke")
  steps_saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                       if p.name.isdigit())
  assert len(steps_saved) >= 2
  proc = env_util.run_module("hrm_jax.evaluate", f"--workdir={workdir}",
                             "--aggregate=all_checkpoints", "--name=pool")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"pooled over {len(steps_saved)} checkpoints" in proc.stdout
  saved = json.loads((workdir / "eval" / "pool.json").read_text())
  assert [e["step"] for e in saved["evaluations"]] == steps_saved
  one = saved["evaluations"][0]["metrics"]
  # The pool holds every checkpoint's votes: their sum.
  assert saved["pooled"]["arc/num_votes"] == sum(
      e["metrics"]["arc/num_votes"] for e in saved["evaluations"])
  assert set(saved["pooled"]) >= {"arc/pass@2", "arc/all_inputs_pass@2",
                                  "arc/per_input_pass@2"}
  assert one["arc/num_tasks"] == saved["pooled"]["arc/num_tasks"]
  submission = json.loads((workdir / "eval" / "pool_submission.json").read_text())
  assert submission and all("attempt_1" in a[0] for a in submission.values())
