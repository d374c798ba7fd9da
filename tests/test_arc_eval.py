"""ARC evaluation: augmentation inversion, voting, pass@K and submission."""

import io
import json

import numpy as np
import pytest

from experiments import arc as arc_experiment
from hrm_jax import data, errors, evaluation, metric_writers, train
from hrm_jax.data import arc
from hrm_jax.data import dihedral
from hrm_jax.data import puzzles
from hrm_jax.evaluators import arc as arc_eval
from hrm_jax.evaluators import arc_pool


@pytest.mark.parametrize("t", range(8))
def test_every_dihedral_and_colour_map_round_trips(t):
  rng = np.random.default_rng(t)
  for _ in range(25):
    h, w = rng.integers(1, 31, 2)
    grid = rng.integers(0, 10, (h, w)).astype(np.int8)
    cmap = np.concatenate([[0], rng.permutation(9) + 1])
    aug = arc.augment_grid(grid, t, cmap)
    # Through the token canvas, as the model sees it.
    seen = arc.crop(arc.encode_grid(aug))
    np.testing.assert_array_equal(arc.invert_grid(seen, t, cmap), grid)
    np.testing.assert_array_equal(dihedral.inverse(dihedral.transform(grid, t),
                                                   t), grid)
    recoloured = arc.augment_grid(grid, 0, cmap)
    assert recoloured[grid == 0].max(initial=0) == 0  # Black stays black.


def _test_split(num_aug=4):
  cfg = data.default_config("arc")
  cfg.update(max_tasks_per_subset=3, num_aug=num_aug)
  plan = arc.plan(cfg, progress=lambda m: None)
  return puzzles.split_from_groups(plan.make_groups("test"),
                                   plan.common_metadata(), plan.identifiers,
                                   plan.seq_len)


def _wrong(labels_BxS):
  """A different but well-formed prediction: recolour every cell."""
  out = labels_BxS.copy()
  colour = out >= 2
  out[colour] = (out[colour] - 2 + 1) % 10 + 2
  return out


def _same_wrong(split, preds, mask):
  """Every masked row predicts one wrong grid *in the original frame*."""
  pids = split.example_puzzle_identifiers()
  for e in np.flatnonzero(mask):
    _, t, cmap = arc.parse_name(split.identifiers[pids[e]])
    original = arc.invert_grid(arc.crop(split.labels[e]), t, cmap)
    wrong = (original + 1) % 10
    preds[e] = arc.encode_grid(arc.augment_grid(wrong, t, cmap))
  return preds


def _batches(split, preds, q, size=7):
  for b in data.eval_batches(split, size):
    idx = b["example_index"]
    safe = np.maximum(idx, 0)
    yield b["puzzle_identifiers"], idx, preds[safe], q[safe], b["inputs"]


def test_perfect_predictions_score_one_and_padding_is_ignored(tmp_path):
  split = _test_split()
  voter = arc_eval.ArcVoter(split)
  q = np.zeros(split.num_examples)
  for ids, idx, pred, qq, _ in _batches(split, split.labels, q):
    voter.add(ids, idx, pred, qq)
  result = voter.finalize()
  assert result["num_tasks"] == 3
  assert all(result[f"pass@{k}"] == 1.0 for k in arc_eval.PASS_AT)
  assert result["num_votes"] == split.num_examples  # Padding rows skipped.
  voter.write_submission(tmp_path / "sub" / "submission.json")
  sub = json.loads((tmp_path / "sub" / "submission.json").read_text())
  assert sorted(sub) == sorted({arc.parse_name(split.identifiers[p])[0]
                                for p in split.puzzle_identifiers})
  for task, attempts in sub.items():
    truths = voter._truth[task]
    assert len(attempts) == len(truths)
    for k, attempt in enumerate(attempts):
      assert attempt["attempt_1"] == truths[k].tolist()


def test_votes_rank_by_count_then_confidence():
  split = _test_split(num_aug=5)  # 6 variants per test input.
  example_puzzle = np.repeat(np.arange(len(split.puzzle_identifiers)),
                             np.diff(split.puzzle_indices))
  variant = example_puzzle - split.group_indices[
      np.searchsorted(split.group_indices, example_puzzle, "right") - 1]

  def score(wrong_variants, q_right, q_wrong):
    wrong = np.isin(variant, wrong_variants)
    preds = _same_wrong(split, split.labels.copy(), wrong)
    q = np.where(wrong, q_wrong, q_right)
    voter = arc_eval.ArcVoter(split)
    for ids, idx, pred, qq, _ in _batches(split, preds, q):
      voter.add(ids, idx, pred, qq)
    return voter.finalize()

  # 4 of 6 views agree on a wrong answer: the truth is second.
  r = score([0, 1, 2, 3], 0.0, 0.0)
  assert r["pass@1"] == 0.0 and r["pass@2"] == 1.0
  # 3 vs 3: the tie goes to the higher mean sigmoid(q_halt).
  assert score([0, 1, 2], 5.0, -5.0)["pass@1"] == 1.0
  assert score([0, 1, 2], -5.0, 5.0)["pass@1"] == 0.0


def test_a_task_needs_every_test_input_right():
  split = _test_split()
  voter = arc_eval.ArcVoter(split)
  # Make every view of one test input of one task wrong.
  task_of = {pid: arc.parse_name(split.identifiers[pid])[0]
             for pid in split.puzzle_identifiers}
  victim = sorted(set(task_of.values()))[0]
  example_pid = split.example_puzzle_identifiers()
  preds = split.labels.copy()
  hit = np.array([task_of[p] == victim for p in example_pid])
  sizes = np.diff(split.puzzle_indices)
  example_k = np.arange(split.num_examples) - np.repeat(
      split.puzzle_indices[:-1], sizes)
  hit &= example_k == 0
  preds[hit] = _wrong(preds[hit])
  for ids, idx, pred, qq, _ in _batches(split, preds,
                                        np.zeros(split.num_examples)):
    voter.add(ids, idx, pred, qq)
  r = voter.finalize()
  # Every view of the victim's first test input is wrong: the truth is
  # absent at any K, although its other test inputs (if any) are right.
  for k in arc_eval.PASS_AT:
    assert r[f"pass@{k}"] == pytest.approx(2 / 3)
  # TRM's rule credits the victim's other test inputs.
  n = len(voter._truth[victim])  # pylint: disable=protected-access
  per_input = voter.finalize("per_input")
  for k in arc_eval.PASS_AT:
    assert r[f"per_input_pass@{k}"] == pytest.approx((2 + (n - 1) / n) / 3)
    assert per_input[f"pass@{k}"] == r[f"per_input_pass@{k}"]
    assert per_input[f"all_inputs_pass@{k}"] == r[f"pass@{k}"]
  with pytest.raises(ValueError, match="arc_scoring"):
    voter.finalize("best_of")


def test_empty_predictions_cast_no_vote_when_skipped():
  split = _test_split()
  voter = arc_eval.ArcVoter(split, empty_grids="skip")
  zeros = np.zeros_like(split.labels)
  for ids, idx, pred, qq, _ in _batches(split, zeros,
                                        np.zeros(split.num_examples)):
    voter.add(ids, idx, pred, qq)
  r = voter.finalize()
  assert r["num_votes"] == 0 and r["pass@1000"] == 0.0
  sub = voter.submission()
  assert all(a["attempt_1"] == [[0]] for v in sub.values() for a in v)


def test_empty_predictions_are_candidates_by_default_as_the_notebook():
  """The reference notebook keeps a prediction that crops to an empty grid as a
  candidate: when most views answer nothing, it takes the first slot."""
  split = _test_split(num_aug=5)
  example_puzzle = np.repeat(np.arange(len(split.puzzle_identifiers)),
                             np.diff(split.puzzle_indices))
  variant = example_puzzle - split.group_indices[
      np.searchsorted(split.group_indices, example_puzzle, "right") - 1]
  preds = split.labels.copy()
  preds[np.isin(variant, [0, 1, 2, 3])] = 0  # 4 of 6 views answer nothing
  results = {}
  for rule in ("vote", "skip"):
    voter = arc_eval.ArcVoter(split, empty_grids=rule)
    for ids, idx, pred, qq, _ in _batches(split, preds, np.zeros(split.num_examples)):
      voter.add(ids, idx, pred, qq)
    results[rule] = voter.finalize()
  assert results["vote"]["pass@1"] == 0.0 and results["vote"]["pass@2"] == 1.0
  assert results["skip"]["pass@1"] == 1.0
  sub = voter.submission()
  assert all(a["attempt_1"] != [] for v in sub.values() for a in v)


def test_evaluator_refuses_the_checker_and_votes_with_the_chosen_sample():
  split = _test_split(num_aug=1)
  with pytest.raises(ValueError, match=r"select='checker' needs a rule check, and arc"):
    arc_eval.Evaluator(split, {"select": "checker", "num_samples": 4}, None)
  evaluator = arc_eval.Evaluator(split, {"select": "vote", "num_samples": 2}, None)
  evaluator.reset()
  q = np.zeros(split.num_examples)
  wrong = _wrong(split.labels.astype(np.int32))
  for ids, idx, pred, qq, inputs in _batches(split, split.labels, q):
    safe = np.maximum(idx, 0)
    # The step chose sample 0 (right); sample 1 (wrong) must cast no vote.
    rows = {"puzzle_identifiers": ids, "example_index": idx, "predictions": pred,
            "q_halt_logits": qq, "inputs": inputs,
            "sample_predictions": np.stack([pred, wrong[safe]], 1),
            "sample_q_halt_logits": np.stack([qq, qq + 1], 1)}
    valid = np.sum(idx >= 0)
    evaluator.add({"count": float(valid), "exact_accuracy": float(valid)}, rows)
  out = evaluator.result()
  assert out["arc/pass@1"] == 1.0
  assert out["arc/num_votes"] == split.num_examples


# ---- Aggregated votes (config.eval.aggregate_votes, hrm_jax/evaluators/arc_pool.py).


def _variants(split):
  """The variant number (0 = the original) of every example of `split`."""
  example_puzzle = np.repeat(np.arange(len(split.puzzle_identifiers)),
                             np.diff(split.puzzle_indices))
  return example_puzzle - split.group_indices[
      np.searchsorted(split.group_indices, example_puzzle, "right") - 1]


def _answers(split, plan):
  """Predictions where the views listed under `plan[c]` answer c: "T" the truth,
  an int s the wrong grid (original + s) % 10 in the original frame."""
  variant = _variants(split)
  pids = split.example_puzzle_identifiers()
  preds = split.labels.copy()
  for answer, views in plan.items():
    if answer == "T":
      continue
    for e in np.flatnonzero(np.isin(variant, views)):
      _, t, cmap = arc.parse_name(split.identifiers[pids[e]])
      original = arc.invert_grid(arc.crop(split.labels[e]), t, cmap)
      preds[e] = arc.encode_grid(arc.augment_grid((original + answer) % 10, t, cmap))
  return preds


def _evaluate(evaluator, split, preds, q, step, max_batches=None):
  """One evaluation through the plug-in interface, as `evaluation.evaluate` runs it
  (None: cut short after `max_batches`, no result)."""
  evaluator.reset(step=step)
  for b, (ids, idx, pred, qq, inputs) in enumerate(_batches(split, preds, q)):
    if max_batches is not None and b == max_batches:
      return None
    rows = {"puzzle_identifiers": ids, "example_index": idx, "predictions": pred,
            "q_halt_logits": qq, "inputs": inputs}
    valid = float(np.sum(idx >= 0))
    evaluator.add({"count": valid, "exact_accuracy": 0.0}, rows)
  return evaluator.result()


_AGGREGATE = {"aggregate_votes": True, "arc_scoring": "per_input"}


def _two_evaluations(split):
  """The hand example: 3 views per test input (num_aug=2). Evaluation 1: views 0, 1
  answer W1, view 2 the truth; evaluation 2: views 0, 1 answer W2, view 2 the truth.
  Wrong views have q_halt 0 (confidence 0.5), right ones +5 (0.993)."""
  variant = _variants(split)
  q = np.where(variant == 2, 5.0, 0.0)
  return [(_answers(split, {1: [0, 1]}), q), (_answers(split, {2: [0, 1]}), q)]


def test_aggregated_votes_pool_the_run_s_evaluations_by_hand():
  split = _test_split(num_aug=2)
  assert set(_variants(split)) == {0, 1, 2}
  evaluator = arc_eval.Evaluator(split, _AGGREGATE, None)
  (p1, q1), (p2, q2) = _two_evaluations(split)
  first = _evaluate(evaluator, split, p1, q1, step=10)
  second = _evaluate(evaluator, split, p2, q2, step=20)
  for r in (first, second):
    # Fresh: the wrong answer has 2 votes, the truth 1: second at each evaluation.
    assert r["arc/pass@1"] == 0.0 and r["arc/pass@2"] == 1.0
    assert r["arc/num_votes"] == split.num_examples
  # Evaluation 1's pool is evaluation 1.
  assert first["arc/aggregated/pass@1"] == 0.0 and first["arc/aggregated/pass@2"] == 1.0
  assert first["arc/aggregated/num_evaluations"] == 1.0
  # Evaluation 2's pool: W1 2 votes (mean confidence 0.5), W2 2 (0.5), truth 2
  # (0.993): the truth is first, for every test input under both rules.
  for rule in ("", "all_inputs_", "per_input_"):
    assert second[f"arc/aggregated/{rule}pass@1"] == 1.0
    assert second[f"arc/{rule}pass@1"] == 0.0
  assert second["arc/aggregated/num_votes"] == 2 * split.num_examples
  assert second["arc/aggregated/num_evaluations"] == 2.0
  # With the option off there is no pool (and no aggregated keys).
  plain = arc_eval.Evaluator(split, {"arc_scoring": "per_input"}, None)
  _evaluate(plain, split, p1, q1, step=10)
  off = _evaluate(plain, split, p2, q2, step=20)
  assert off["arc/pass@1"] == 0.0 and not any("aggregated" in k for k in off)
  # The public pooling of two evaluations' voters gives the same pool.
  voters = []
  for preds, q in _two_evaluations(split):
    _evaluate(plain, split, preds, q, step=None)
    voters.append(plain.voter)
  pooled = arc_eval.ArcVoter(split).merge(voters[0]).merge(voters[1])
  assert pooled.finalize("per_input")["pass@1"] == 1.0
  assert voters[0].finalize()["num_votes"] == split.num_examples  # inputs unchanged


def test_the_pool_is_saved_per_step_and_restored_without_double_counting(tmp_path):
  split = _test_split(num_aug=2)
  (p1, q1), (p2, q2) = _two_evaluations(split)
  p3, q3 = _answers(split, {1: [0, 1, 2]}), np.zeros(split.num_examples)
  straight = arc_eval.Evaluator(split, _AGGREGATE, tmp_path / "straight")
  expected = [_evaluate(straight, split, p, q, step=s)
              for s, (p, q) in zip((10, 20, 30), ((p1, q1), (p2, q2), (p3, q3)))]
  # Evaluation 3's pool: W1 5 votes, truth 2 (0.993), W2 2 (0.5).
  assert expected[2]["arc/aggregated/pass@1"] == 0.0
  assert expected[2]["arc/aggregated/pass@2"] == 1.0
  assert expected[2]["arc/pass@1000"] == 0.0  # alone, it never saw the truth

  workdir = tmp_path / "resumed"
  first = arc_eval.Evaluator(split, _AGGREGATE, workdir)
  assert _evaluate(first, split, p1, q1, step=10) == expected[0]
  assert _evaluate(first, split, p2, q2, step=20) == expected[1]
  assert sorted(p.name for p in (workdir / "arc_votes").iterdir()) == [
      "step_10.npz", "step_20.npz"]
  # A new process (a resumed run) owes the evaluation of step 20 again: it pools
  # step 10 only, and replaces step 20's votes instead of adding them twice.
  resumed = arc_eval.Evaluator(split, _AGGREGATE, workdir)
  assert _evaluate(resumed, split, p2, q2, step=20) == expected[1]
  assert _evaluate(resumed, split, p2, q2, step=20) == expected[1]
  # A cut evaluation (no result) saves nothing.
  assert _evaluate(resumed, split, p3, q3, step=30, max_batches=1) is None
  assert arc_pool.VotePool(workdir).steps() == [10, 20]
  assert _evaluate(resumed, split, p3, q3, step=30) == expected[2]
  # Outside a run (step None) the pool starts empty: pooled = fresh.
  alone = _evaluate(resumed, split, p2, q2, step=None)
  assert alone["arc/aggregated/num_evaluations"] == 1.0
  assert alone["arc/aggregated/pass@1"] == alone["arc/pass@1"] == 0.0
  assert arc_pool.VotePool(workdir).steps() == [10, 20, 30]
  # A run that falls back to an older checkpoint ignores the later steps' votes,
  # and drops them when it saves.
  back = _evaluate(resumed, split, p2, q2, step=15)
  assert back["arc/aggregated/num_evaluations"] == 2.0
  assert back["arc/aggregated/pass@1"] == 1.0
  assert arc_pool.VotePool(workdir).steps() == [10, 15]


def test_vote_files_round_trip_exactly():
  votes = arc_eval.Votes()
  grids = [np.array([[1, 2], [3, 4]], np.int8), np.zeros((0, 0), np.int8),
           np.zeros((0, 3), np.int8), np.arange(30, dtype=np.int8).reshape(5, 6) % 10]
  for i, grid in enumerate(grids):
    votes.add_counted((f"task{i % 2}", i // 2), grid, i + 1, 0.1 * i + 1 / 3)
  votes.add(("task0", 0), grids[0], 0.25)
  restored = arc_eval.Votes()
  arc_pool.decode(arc_pool.encode(votes), restored)
  before, after = list(votes.entries()), list(restored.entries())
  assert len(before) == len(after) == 4
  for (q, g, n, c), (q2, g2, n2, c2) in zip(before, after):
    assert (q, g.shape, n, c) == (q2, g2.shape, n2, c2)  # floats bit-exact
    np.testing.assert_array_equal(g, g2)
  empty = arc_eval.Votes()
  arc_pool.decode(arc_pool.encode(arc_eval.Votes()), empty)
  assert empty.num_votes == 0


def test_a_corrupt_vote_file_is_one_line_naming_it(tmp_path):
  split = _test_split(num_aug=2)
  (p1, q1), _ = _two_evaluations(split)
  evaluator = arc_eval.Evaluator(split, _AGGREGATE, tmp_path)
  _evaluate(evaluator, split, p1, q1, step=10)
  path = tmp_path / "arc_votes" / "step_10.npz"
  good = path.read_bytes()
  damaged = {"garbage": b"not a zip file", "truncated": good[:len(good) // 2]}
  buffer = io.BytesIO()
  np.savez(buffer, format=np.int32(1), count=np.ones(3))
  damaged["fields missing"] = buffer.getvalue()
  with np.load(io.BytesIO(good)) as npz:
    fields = dict(npz)
  fields["cells"] = fields["cells"][:-1]
  buffer = io.BytesIO()
  np.savez(buffer, **fields)
  damaged["short cells"] = buffer.getvalue()
  for why, blob in damaged.items():
    path.write_bytes(blob)
    with pytest.raises(arc_pool.CorruptVotesError) as info:
      evaluator.reset(step=20)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, (why, message)
    failure = errors.explain(info.value)  # a runtime failure, shown as it is
    assert failure.exit_code == errors.RUNTIME and failure.message == message
  # A stray temporary file (a save killed half-way) is not a step.
  path.write_bytes(good)
  (tmp_path / "arc_votes" / ".step_20.npz.tmp").write_bytes(b"half")
  assert arc_pool.VotePool(tmp_path).steps() == [10]


class _Killed(Exception):
  """The process dies after an evaluation, before its record is written."""


def _eval_records(workdir):
  timing = ("eval/seconds", "eval/elapsed_s")
  return {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/") and k not in timing}
          for r in metric_writers.read_jsonl_metrics(workdir)
          if any(k.startswith("eval/") for k in r)}


@pytest.mark.slow
def test_a_run_killed_after_an_evaluation_reports_the_uninterrupted_pool(tmp_path, monkeypatch):
  """arc.py:smoke with aggregate_votes, evaluations at steps 2 and 4: killed right
  after evaluating step 2 (its votes saved, its record not written), the resumed run
  evaluates step 2 again and then 4, and records what the uninterrupted run does."""
  config = arc_experiment.get_config("smoke")
  config.data.data_dir = str(tmp_path / "data")
  config.total_steps, config.eval.every_steps = 4, 2
  config.eval.aggregate_votes = True
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  expected = _eval_records(tmp_path / "straight")
  assert sorted(expected) == [2, 4]
  assert expected[4]["eval/arc/aggregated/num_evaluations"] == 2.0
  assert expected[4]["eval/arc/aggregated/num_votes"] == (
      expected[2]["eval/arc/num_votes"] + expected[4]["eval/arc/num_votes"])

  real_evaluate = evaluation.evaluate

  def evaluate_then_die(*args, step=None, **kwargs):
    result = real_evaluate(*args, step=step, **kwargs)
    if step == 2:
      raise _Killed()
    return result

  monkeypatch.setattr(evaluation, "evaluate", evaluate_then_die)
  with pytest.raises(_Killed):
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(evaluation, "evaluate", real_evaluate)
  assert arc_pool.VotePool(tmp_path / "resumed").steps() == [2]
  assert _eval_records(tmp_path / "resumed") == {}
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert _eval_records(tmp_path / "resumed") == expected


def test_the_trm_variants_pool_their_votes_and_the_others_do_not():
  for variant in ("trm", "trm,arc2", "trm,smoke"):
    assert arc_experiment.get_config(variant).eval.aggregate_votes, variant
  for variant in (None, "arc2", "smoke"):
    assert not arc_experiment.get_config(variant).eval.aggregate_votes, variant
