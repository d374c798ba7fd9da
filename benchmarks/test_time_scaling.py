"""Test-time compute on the 6x6 Sudoku CPU model: segments x samples x selection rule.

  python benchmarks/test_time_scaling.py [--workdir=DIR] [--noise=0.1,0.3,1.0]

Trains `experiments/sudoku.py:cpu` with 16 blanks per board (the setting whose
held-out exact accuracy plateaus at ~84%; reuses --workdir when it already holds
the finished run), then evaluates the same trained weights with K sampled
trajectories per board (`act.rollout`: Gaussian noise of std sigma on the
latent carry before every segment) on the first --test_size test boards, and
prints one table: for every number of segments M in --segments and every sigma
in --noise (plus the deterministic K = 1, sigma = 0 baseline), K in --samples,
the exact accuracy of each selection rule (`hrm_jax.sampling`: q_halt, vote,
checker), the oracle (any of the K right), one sample's mean accuracy, the
checker's "unsure" rate and the wall time per evaluated board (the model, the
on-device rules and the host-side rule check; compilation excluded).

The last line is one JSON object with a key per cell, "exact_<rule>_<K>" plus
"_seg<M>" unless M is the run's evaluation default (`config.eval.halt_max_steps`,
8) and "_sigma<sigma>" unless sigma is --default_noise (K = 1 keys without a
suffix are the sigma = 0 baseline), e.g. exact_q_halt_16, exact_oracle_16,
exact_vote_4_seg16, exact_q_halt_16_sigma1.0.
"""
# pylint: disable=invalid-name
import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from experiments import sudoku as sudoku_exp
from hrm_jax import data, sampling, steps, workdir as workdir_lib
from hrm_jax.evaluators import exact_match

ROOT = pathlib.Path(__file__).resolve().parents[1]
RULES = ("q_halt", "vote", "checker", "oracle")


def trained_workdir(config, workdir: pathlib.Path) -> workdir_lib.TrainedModel:
  """The finished run in `workdir` (trained here unless it is there already)."""
  try:
    loaded = workdir_lib.load_weights(workdir)
    if loaded.step == config.total_steps:
      print(f"Reusing the run in {workdir} (step {loaded.step}).", flush=True)
      return loaded
  except workdir_lib.WorkdirError:
    pass
  t0 = time.perf_counter()
  print(f"Training experiments/sudoku.py:cpu with {config.data.num_blanks} blanks in "
        f"{workdir} ...", flush=True)
  # The user's command (`hrm_jax.main`), as benchmarks/cpu_learning.py runs it.
  cmd = [sys.executable, "-m", "hrm_jax.main", "--config=experiments/sudoku.py:cpu",
         f"--config.data.num_blanks={config.data.num_blanks}",
         f"--config.data.data_dir={config.data.data_dir}", f"--workdir={workdir}"]
  proc = subprocess.run(cmd, cwd=ROOT, check=False)
  if proc.returncode:
    raise SystemExit(f"Training failed (exit {proc.returncode}): {' '.join(cmd)}")
  print(f"Trained in {time.perf_counter() - t0:.0f} s.", flush=True)
  return workdir_lib.load_weights(workdir)


def first_boards(split, n: int):
  """The split's first n boards (one example per puzzle, one puzzle per group)."""
  n = min(n, split.num_examples)
  assert split.num_groups == split.num_examples == len(split.puzzle_identifiers)
  return dataclasses.replace(
      split, inputs=split.inputs[:n], labels=split.labels[:n],
      puzzle_identifiers=split.puzzle_identifiers[:n],
      puzzle_indices=split.puzzle_indices[:n + 1], group_indices=split.group_indices[:n + 1])


def evaluate(loaded, split, M: int, K: int, sigma: float, batch_size: int,
             seed: int) -> dict[str, float]:
  """One cell: every rule's exact accuracy and the time per board."""
  eval_fn = steps.build_eval_step(loaded.model, M, num_samples=K, latent_noise=sigma,
                                  select="q_halt")
  evaluator = exact_match.Evaluator(split, {"num_samples": K, "select": "checker"}, None)
  check = data.family("sudoku").check_answer
  batches = list(data.eval_batches(split, batch_size))
  key = jax.random.key(seed)
  for batch in batches[:1]:  # compile outside the clock
    del batch["example_index"]
    jax.block_until_ready(eval_fn(loaded.weights, batch, key))
  t0 = time.perf_counter()
  for i, batch in enumerate(batches):
    batch.pop("example_index", None)
    sums, rows = jax.device_get(eval_fn(loaded.weights, batch, jax.random.fold_in(key, i)))
    rows["labels"] = batch["labels"]
    rows["sample_accepted"] = sampling.accepted(check, batch["inputs"],
                                                sampling.candidates(rows)[0])
    evaluator.add(sums, rows)
  wall = time.perf_counter() - t0
  out = evaluator.result()
  if K == 1:  # one candidate: every rule picks it
    for rule in ("q_halt", "vote", "oracle", "mean_sample"):
      out[f"exact_{rule}"] = out["exact_checker"]
  out["ms_per_board"] = 1000.0 * wall / out["count"]
  return out


def key_suffix(K: int, M: int, sigma: float, default_M: int, default_sigma: float) -> str:
  """"_seg<M>" off the default segments; "_sigma<s>" off the default sigma (K = 1:
  off sigma = 0, the deterministic baseline)."""
  suffix = f"_seg{M}" if M != default_M else ""
  if sigma != (0.0 if K == 1 else default_sigma):
    suffix += f"_sigma{sigma:g}"
  return suffix


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="", help="run directory (reused if trained)")
  parser.add_argument("--data_dir", default="", help="dataset cache (default: temp)")
  parser.add_argument("--segments", default="4,8,16")
  parser.add_argument("--samples", default="1,4,16")
  parser.add_argument("--noise", default="0.1,0.3,1.0", help="sigma values to try")
  parser.add_argument("--default_noise", type=float, default=None,
                      help="the sigma whose keys carry no suffix (default: the first)")
  parser.add_argument("--test_size", type=int, default=512)
  parser.add_argument("--batch", type=int, default=256, help="boards per eval batch")
  parser.add_argument("--seed", type=int, default=0, help="seeds the latent noise")
  args = parser.parse_args()

  config = sudoku_exp.get_config("cpu")
  config.data.num_blanks = 16
  tmp = tempfile.mkdtemp(prefix="hrm_ttc_")
  config.data.data_dir = args.data_dir or os.path.join(tmp, "data")
  workdir = pathlib.Path(args.workdir or os.path.join(tmp, "run"))
  loaded = trained_workdir(config, workdir)
  split = first_boards(data.load(config.data, "test"), args.test_size)
  n = split.num_examples

  segments = [int(s) for s in args.segments.split(",")]
  samples = [int(s) for s in args.samples.split(",")]
  noise = [float(s) for s in args.noise.split(",")]
  default_sigma = noise[0] if args.default_noise is None else args.default_noise
  default_M = config.eval.halt_max_steps
  settings = [(1, 0.0)] + [(K, s) for s in noise for K in samples]
  print(f"{n} held-out boards, batches of {args.batch}; trained with "
        f"{loaded.model.config.halt_max_steps} segments; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
  header = (f"{'segs':>4} {'sigma':>5} {'K':>3} | {'q_halt':>6} {'vote':>6} {'checker':>7} "
            f"{'oracle':>6} | {'1 sample':>8} {'unsure':>6} {'distinct':>8} | "
            f"{'ms/board':>8}")
  print(header)
  print("-" * len(header))
  summary = {}
  for M in segments:
    for K, sigma in settings:
      out = evaluate(loaded, split, M, K, sigma, args.batch, args.seed)
      print(f"{M:>4} {sigma:>5g} {K:>3} | {out['exact_q_halt']:>6.3f} "
            f"{out['exact_vote']:>6.3f} {out['exact_checker']:>7.3f} "
            f"{out['exact_oracle']:>6.3f} | {out['exact_mean_sample']:>8.3f} "
            f"{out['checker_unsure']:>6.3f} {out.get('distinct_answers', 1.0):>8.2f} | "
            f"{out['ms_per_board']:>8.2f}", flush=True)
      suffix = key_suffix(K, M, sigma, default_M, default_sigma)
      for rule in RULES:
        summary[f"exact_{rule}_{K}{suffix}"] = round(float(out[f"exact_{rule}"]), 4)
      summary[f"ms_per_board_{K}{suffix}"] = round(out["ms_per_board"], 3)
  summary["default_segments"] = default_M
  summary["default_noise"] = default_sigma
  summary["test_boards"] = n
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
