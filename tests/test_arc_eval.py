"""ARC evaluation: augmentation inversion, voting, pass@K and submission."""

import json

import numpy as np
import pytest

from hrm_jax import data
from hrm_jax.data import arc
from hrm_jax.data import dihedral
from hrm_jax.data import puzzles
from hrm_jax.evaluators import arc as arc_eval


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
