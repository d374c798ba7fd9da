"""Test-time compute on a CPU model: segments x halting x noise x samples x rule, with NFE.

  python benchmarks/test_time_scaling.py [--experiment=sudoku|maze] [--workdir=DIR]
      [--trained=DIR] [--segments=4,8,16] [--samples=1,4,16] [--noise=0.3,1.0]
      [--noise_on=both,z_L,init] [--halting=fixed,adaptive]

Trains the experiment's CPU model through `python -m hrm_jax.main` (sudoku:
`sudoku.py:cpu` with 16 blanks per board, the setting whose held-out exact
accuracy plateaus below 100%; maze: `maze.py:cpu`), reusing --workdir when it
holds the finished run, or takes any trained run as it is (--trained), then
evaluates it with the user's command, `python -m hrm_jax.evaluate`: once
deterministically (K = 1, no noise) and once for every segments x halting x
sigma x placement x K cell, every selection rule of `hrm_jax.sampling` on the
same samples. It prints one table: a row per cell with each rule's exact
accuracy, the oracle (any of the K right), NFE per puzzle (network calls: the
segments run x calls per segment x K) and puzzles/s (the CPU shared with
whatever else runs: compare within one table).

The last line is one JSON object with a key per cell and rule,
"exact_<rule>_K<K>_M<M>_<halting>_sigma<sigma>_<placement>", "nfe_..." likewise.
"""
# pylint: disable=invalid-name
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RULES = ("q_halt", "vote", "first_halt", "confidence", "checker")
TRAIN = {"sudoku": ["--config=experiments/sudoku.py:cpu", "--config.data.num_blanks=16"],
         "maze": ["--config=experiments/maze.py:cpu"]}


def _run(cmd: list[str]) -> None:
  proc = subprocess.run(cmd, cwd=ROOT, check=False)
  if proc.returncode:
    raise SystemExit(f"Failed (exit {proc.returncode}): {' '.join(cmd)}")


def trained_workdir(experiment: str, workdir: pathlib.Path, data_dir: str) -> None:
  """Trains the experiment's CPU run into `workdir` (resumes; a finished run
  returns at once: `main` trains no step past total_steps)."""
  t0 = time.perf_counter()
  print(f"Training {' '.join(TRAIN[experiment])} in {workdir} ...", flush=True)
  _run([sys.executable, "-m", "hrm_jax.main", *TRAIN[experiment], f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}"])
  print(f"Trained (or reused) in {time.perf_counter() - t0:.0f} s.", flush=True)


def evaluate(workdir: pathlib.Path, name: str, flags: list[str]) -> list[dict]:
  """`python -m hrm_jax.evaluate` with `flags`; the rows of its JSON."""
  _run([sys.executable, "-m", "hrm_jax.evaluate", f"--workdir={workdir}", f"--name={name}",
        f"--select={','.join(RULES)}", *flags])
  return json.loads((workdir / "eval" / f"{name}.json").read_text())["rows"]


def cell_key(r: dict) -> str:
  return (f"K{r['num_samples']}_M{r['segments']}_{r['halting']}_sigma{r['noise']:g}_"
          f"{r['noise_on']}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiment", default="sudoku", choices=sorted(TRAIN))
  parser.add_argument("--workdir", default="", help="run directory (trained unless finished)")
  parser.add_argument("--trained", default="", help="evaluate this run as it is")
  parser.add_argument("--data_dir", default="", help="dataset cache (default: temp)")
  parser.add_argument("--segments", default="4,8,16")
  parser.add_argument("--samples", default="4,16")
  parser.add_argument("--noise", default="0.3,1.0", help="sigma values to try")
  parser.add_argument("--noise_on", default="both,z_L,init")
  parser.add_argument("--halting", default="fixed,adaptive")
  parser.add_argument("--test_size", type=int, default=512, help="first N test puzzles")
  parser.add_argument("--batch", type=int, default=256, help="puzzles per eval batch")
  args = parser.parse_args()

  tmp = tempfile.mkdtemp(prefix="hrm_ttc_")
  workdir = pathlib.Path(args.trained or args.workdir or os.path.join(tmp, "run"))
  if not args.trained:
    trained_workdir(args.experiment, workdir, args.data_dir or os.path.join(tmp, "data"))
  batch = min(args.batch, args.test_size)
  common = [f"--segments={args.segments}", f"--halting={args.halting}",
            f"--batch_size={batch}", f"--max_batches={-(-args.test_size // batch)}"]
  print(f"{args.experiment}: first {args.test_size} test puzzles; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
  rows = evaluate(workdir, "ttc_deterministic", common + ["--num_samples=1", "--noise=0"])
  rows += evaluate(workdir, "ttc_sampled", common + [
      f"--num_samples={args.samples}", f"--noise={args.noise}", f"--noise_on={args.noise_on}"])

  cells: dict[str, dict] = {}
  for r in rows:
    cells.setdefault(cell_key(r), dict(r, exact={}))["exact"][r["select"]] = r["accuracy"]
  header = (f"{'M':>3} {'halting':>8} {'sigma':>5} {'on':>5} {'K':>3} | " +
            " ".join(f"{rule[:10]:>10}" for rule in RULES) +
            f" {'oracle':>6} | {'NFE':>7} {'puzzles/s':>9}")
  print(header)
  print("-" * len(header))
  summary = {}
  for key, c in sorted(cells.items(), key=lambda kv: (kv[1]["segments"], kv[1]["halting"],
                                                      kv[1]["noise"], kv[1]["noise_on"],
                                                      kv[1]["num_samples"])):
    print(f"{c['segments']:>3} {c['halting']:>8} {c['noise']:>5g} {c['noise_on']:>5} "
          f"{c['num_samples']:>3} | " +
          " ".join(f"{c['exact'].get(rule, float('nan')):>10.3f}" for rule in RULES) +
          f" {c['oracle']:>6.3f} | {c['nfe']:>7.1f} {c['puzzles_per_s']:>9.1f}", flush=True)
    for rule in RULES:
      summary[f"exact_{rule}_{key}"] = round(float(c["exact"][rule]), 4)
    summary[f"oracle_{key}"] = round(float(c["oracle"]), 4)
    summary[f"nfe_{key}"] = round(float(c["nfe"]), 2)
  summary["experiment"] = args.experiment
  summary["test_puzzles"] = args.test_size
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
