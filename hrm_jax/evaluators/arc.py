"""ARC scoring: undo each variant's augmentation, vote, report pass@K.

Reference `arc_eval.ipynb` (spec §6.2): every test row's argmax prediction is
cropped at the EOS border (largest top-left all-colour rectangle), mapped
back through the inverse dihedral transform and the inverse colour map of its
variant, and counted as one vote for that grid for its (task, test input).
Candidates rank by vote count, ties by mean sigmoid(q_halt).

Two scores, both reported (`config.eval.arc_scoring` picks which one is
`arc/pass@K`):
  * "all_inputs" (HRM's notebook, the default): a task scores at K only if
    *every* one of its test inputs has the true output in the top K
    (`arc/all_inputs_pass@K`);
  * "per_input" (TRM's `evaluators/arc.py`): a task scores the fraction of its
    test inputs solved at K, averaged over tasks (`arc/per_input_pass@K`).
Empty answers: the notebook counts a prediction that crops to an empty grid as
a candidate like any other (it can take a top-K slot); that is the default
(`config.eval.empty_grids="vote"`), so `arc/pass@2` is comparable with
published numbers. `"skip"` lets them cast no vote (an empty grid is never
right, so this can only help): an option, reported under the same names.

Sampled trajectories (`config.eval.num_samples` K > 1): each row votes with
the one sample `config.eval.select` chose ("q_halt" or "vote" among its K;
ARC has no rule check, so "checker" is refused).

Aggregated votes (`config.eval.aggregate_votes`, on in the TRM variants as TRM's
`aggregated_voting=True`): each evaluation of a run also votes over the
predictions of every earlier evaluation of the run (a checkpoint ensemble; TRM's
ARC figures are such pools). Both figures are reported: `arc/pass@K` (and the
two rule variants) is always this checkpoint's own vote, so its meaning does not
change with the option; `arc/aggregated/pass@K`, `arc/aggregated/all_inputs_pass@K`
and `arc/aggregated/per_input_pass@K` score the pool (`arc/aggregated/pass@2` is
the figure comparable with TRM's paper; `arc/aggregated/num_evaluations` says
how many evaluations it holds). The pool is saved per step in the workdir so a
resumed run reports what an uninterrupted one would (`arc_pool`).

`Votes` is the vote core (also used by `solve`); `ArcVoter` adds the split's
ground truth and pass@K (`config.eval.pass_ks`); `Evaluator` adapts it to the
trainer's evaluator plug-in interface (`hrm_jax.evaluators.<type>.Evaluator`).
"""

from __future__ import annotations

import collections
import hashlib
import json

import numpy as np
from etils import epath

from hrm_jax import sampling
from hrm_jax.data import arc as arc_data
from hrm_jax.data import puzzles
from hrm_jax.evaluators import arc_pool
from hrm_jax.evaluators import exact_match

PASS_AT = (1, 2, 5, 10, 100, 1000)


def grid_key(grid: np.ndarray) -> bytes:
  """Identity of a grid for voting: its shape and cells."""
  return hashlib.sha256(np.asarray(grid.shape, np.int32).tobytes() +
                        np.ascontiguousarray(grid, np.int8).tobytes()).digest()


class Votes:
  """The vote core shared by the evaluator and `solve`: per question (any
  hashable key, e.g. (task, test index)) identical answers are bucketed and
  ranked by vote count, ties by the mean sigmoid(q_halt) of their voters."""

  def __init__(self):
    # votes[question][grid key] = [count, sum of confidences, grid]
    self._votes: dict = collections.defaultdict(dict)

  def add(self, question, grid: np.ndarray, confidence: float) -> None:
    self.add_counted(question, grid, 1, confidence)

  def add_counted(self, question, grid: np.ndarray, count: int,
                  confidence_sum: float) -> None:
    """`count` votes for `grid` whose confidences sum to `confidence_sum`."""
    slot = self._votes[question].setdefault(grid_key(grid), [0, 0.0, grid])
    slot[0] += int(count)
    slot[1] += float(confidence_sum)

  def merge(self, other: Votes) -> Votes:
    """Adds every vote of `other` to these, in place (`other` is unchanged: the
    grids are shared, never modified); returns self."""
    for question, slots in other._votes.items():  # pylint: disable=protected-access
      mine = self._votes[question]
      for key, (count, confidence_sum, grid) in slots.items():
        slot = mine.setdefault(key, [0, 0.0, grid])
        slot[0] += count
        slot[1] += confidence_sum
    return self

  def entries(self):
    """(question, grid, count, confidence sum) of every candidate, in the order
    they were first voted for (which breaks exact ties in `ranked`)."""
    for question, slots in self._votes.items():
      for count, confidence_sum, grid in slots.values():
        yield question, grid, count, confidence_sum

  def ranked(self, question) -> list[tuple[np.ndarray, int, float]]:
    """(grid, votes, mean confidence) per candidate, best first."""
    slots = self._votes.get(question, {}).values()
    order = sorted(slots, key=lambda s: (s[0], s[1] / s[0]), reverse=True)
    return [(s[2], s[0], s[1] / s[0]) for s in order]

  @property
  def num_votes(self) -> int:
    return sum(s[0] for v in self._votes.values() for s in v.values())


class ArcVoter:
  """Votes over the augmented variants of an ARC test split."""

  def __init__(self, split_info: puzzles.PuzzleSplit, pass_ks=PASS_AT,
               empty_grids: str = "vote"):
    split = split_info
    if empty_grids not in ("vote", "skip"):
      raise ValueError(f"config.eval.empty_grids={empty_grids!r}: use 'vote' (the "
                       "reference notebook) or 'skip'.")
    self._pass_ks = tuple(int(k) for k in pass_ks)
    self._skip_empty = empty_grids == "skip"
    names = [arc_data.parse_name(n) for n in split.identifiers]
    self._names = names
    sizes = np.diff(split.puzzle_indices)
    example_puzzle = np.repeat(np.arange(len(sizes)), sizes)
    self._example_k = (np.arange(split.num_examples) -
                       split.puzzle_indices[example_puzzle])
    # Ground truth from the non-augmented puzzles (identity names).
    self._truth: dict[str, dict[int, np.ndarray]] = collections.defaultdict(
        dict)
    for p, pid in enumerate(split.puzzle_identifiers.tolist()):
      name = split.identifiers[pid]
      task = names[pid][0]
      if name != task:
        continue
      for k in range(int(sizes[p])):
        e = int(split.puzzle_indices[p]) + k
        self._truth[task][k] = arc_data.crop(split.labels[e])
    self._votes = Votes()

  def add(self, puzzle_identifiers_B, example_index_B, predictions_BxS,
          q_halt_logits_B) -> None:
    """Adds one batch of `eval_batches` rows (example index -1 = padding;
    rows with puzzle id 0 are ignored)."""
    ids = np.asarray(puzzle_identifiers_B).reshape(-1)
    examples = np.asarray(example_index_B).reshape(-1)
    preds = np.asarray(predictions_BxS).reshape(len(ids), -1)
    conf = 1.0 / (1.0 + np.exp(-np.asarray(q_halt_logits_B, np.float64)))
    for i, pid in enumerate(ids.tolist()):
      if pid == puzzles.BLANK_IDENTIFIER_ID or examples[i] < 0:
        continue
      task, t, cmap = self._names[pid]
      grid = arc_data.crop(preds[i])
      if grid.size == 0 and self._skip_empty:
        continue
      self._votes.add((task, int(self._example_k[examples[i]])),
                      arc_data.invert_grid(grid, t, cmap), conf[i])

  @property
  def votes(self) -> Votes:
    """The votes so far, by question (task, test index)."""
    return self._votes

  def merge(self, other: ArcVoter | Votes) -> ArcVoter:
    """Adds the votes of `other` (another evaluation's voter, e.g. of another
    checkpoint, or saved `Votes`) to this one's, in place; returns self, so that
    `ArcVoter(split).merge(a).merge(b).finalize(scoring)` scores the pool.
    Questions are (task, test index): the voters need not share a split object,
    and this voter's ground truth scores the pool."""
    self._votes.merge(other.votes if isinstance(other, ArcVoter) else other)
    return self

  def ranked(self, task: str, k: int) -> list[np.ndarray]:
    """Candidate grids for test input k of task, best first."""
    return [grid for grid, _, _ in self._votes.ranked((task, k))]

  def finalize(self, scoring: str = "all_inputs") -> dict[str, float]:
    """pass@K over all tasks with ground truth (fractions in [0, 1]) under both
    rules, and `pass@K` under `scoring` (see the module docstring)."""
    if scoring not in ("all_inputs", "per_input"):
      raise ValueError(f"config.eval.arc_scoring={scoring!r}: use 'all_inputs' (HRM) "
                       "or 'per_input' (TRM).")
    all_inputs = {k: 0.0 for k in self._pass_ks}
    per_input = {k: 0.0 for k in self._pass_ks}
    for task, truths in self._truth.items():
      ranks = []  # rank of the true answer for each test input (inf: absent)
      for k, truth in truths.items():
        keys = [grid_key(g) for g in self.ranked(task, k)]
        ranks.append(keys.index(grid_key(truth)) if grid_key(truth) in keys else np.inf)
      for at in self._pass_ks:
        all_inputs[at] += max(ranks) < at
        per_input[at] += float(np.mean([r < at for r in ranks]))
    num = max(1, len(self._truth))
    out = {}
    for at in self._pass_ks:
      out[f"all_inputs_pass@{at}"] = all_inputs[at] / num
      out[f"per_input_pass@{at}"] = per_input[at] / num
      out[f"pass@{at}"] = out[f"{scoring}_pass@{at}"]
    out["num_tasks"] = float(len(self._truth))
    out["num_votes"] = float(self._votes.num_votes)
    return out

  def submission(self) -> dict:
    """Kaggle ARC Prize format: task -> [{"attempt_1", "attempt_2"}, ...]."""
    out = {}
    for task in sorted(self._truth):
      attempts = []
      for k in sorted(self._truth[task]):
        # Kaggle needs a non-empty grid per attempt: empty answers become [[0]].
        ranked = [g.tolist() if g.size else [[0]] for g in self.ranked(task, k)[:2]]
        ranked = ranked or [[[0]]]
        attempts.append({"attempt_1": ranked[0],
                         "attempt_2": ranked[1 if len(ranked) > 1 else 0]})
      out[task] = attempts
    return out

  def write_submission(self, path) -> None:
    """Writes the Kaggle-format JSON; `path` may be local or gs:// (etils.epath)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(self.submission()))


class Evaluator:
  """Trainer plug-in: exact-match metrics plus ARC voting and pass@K.

  With `config.eval.aggregate_votes` it also reports the votes pooled over this
  evaluation and the run's earlier ones (module docstring; `arc_pool`). Writes
  `<workdir>/arc_submission.json` (and `arc_submission_aggregated.json`) on
  process 0 after each evaluation.
  """
  needs_rows = True

  def __init__(self, split, eval_cfg, workdir):
    sampling.check_family(eval_cfg.get("select", "q_halt"), arc_data.NAME,
                          arc_data.check_answer)
    self._split = split
    self._workdir = workdir
    self._options = dict(pass_ks=tuple(eval_cfg.get("pass_ks", PASS_AT)),
                         empty_grids=eval_cfg.get("empty_grids", "vote"))
    self._scoring = eval_cfg.get("arc_scoring", "all_inputs")
    self._aggregate = bool(eval_cfg.get("aggregate_votes", False))
    self._pool = arc_pool.VotePool(workdir)
    self._metrics = exact_match.Evaluator(split, eval_cfg, workdir)
    self.reset()

  def reset(self, step: int | None = None) -> None:
    """Starts an evaluation of the weights of train `step` (None: outside a run,
    the pool starts empty and is not saved)."""
    self._metrics.reset()
    self._voter = ArcVoter(self._split, **self._options)
    self._step, self._result = step, None
    self._pooled, self._num_pooled = None, 0
    if self._aggregate:
      self._pooled = ArcVoter(self._split, **self._options)
      if step is not None:
        self._num_pooled = self._pool.load_into(self._pooled.votes, before=step)

  @property
  def voter(self) -> ArcVoter:
    """This evaluation's own votes (also with aggregate_votes): what an `evaluate`
    command pools over checkpoints, `ArcVoter(split).merge(...)`."""
    return self._voter

  def add(self, metric_sums, rows) -> None:
    self._metrics.add(metric_sums, None)
    self._voter.add(rows["puzzle_identifiers"], rows["example_index"],
                    rows["predictions"], rows["q_halt_logits"])

  def result(self) -> dict[str, float]:
    """The metrics of the evaluation; with aggregate_votes, saves its votes under
    its step first (once: calling again returns the same dict)."""
    if self._result is not None:
      return dict(self._result)
    out = dict(self._metrics.result())
    out.update({f"arc/{k}": v for k, v in self._voter.finalize(self._scoring).items()})
    if self._aggregate:
      if self._step is not None:
        self._pool.save(self._step, self._voter.votes)
      self._pooled.merge(self._voter)
      pooled = self._pooled.finalize(self._scoring)
      del pooled["num_tasks"]  # as arc/num_tasks
      out.update({f"arc/aggregated/{k}": v for k, v in pooled.items()})
      out["arc/aggregated/num_evaluations"] = float(self._num_pooled + 1)
    if self._workdir is not None:
      import jax  # pylint: disable=g-import-not-at-top
      if jax.process_index() == 0:
        workdir = epath.Path(self._workdir)
        self._voter.write_submission(workdir / "arc_submission.json")
        if self._aggregate:
          self._pooled.write_submission(workdir / "arc_submission_aggregated.json")
    self._result = out
    return dict(out)
