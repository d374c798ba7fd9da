"""Time to accuracy of the CPU experiment variants on this machine.

  python benchmarks/cpu_learning.py [--only=sudoku,maze,arc] [--workdir_root=DIR]
  python benchmarks/cpu_learning.py --only=sudoku:cpu,sudoku:trm,cpu,maze:cpu,maze:trm,cpu

`--only` lists runs. A bare experiment name (`sudoku`) is its `:cpu` variant; an
experiment name followed by `:` gives the variant tokens in full, and since variants
have commas in them (`trm,cpu`), a comma-separated token that is not an experiment
name continues the variant before it: `sudoku:trm,cpu,maze` is `sudoku:trm,cpu` then
`maze:cpu`. `;` also separates runs (`--only="sudoku:trm,cpu;maze:trm,cpu"`).

Each run is `python -m hrm_jax.main --config=experiments/<name>.py:<variant>` from
scratch: its own fresh workdir and its own data directory, so every run pays for
building its data (locally, nothing downloaded) even when two runs share a dataset.
Runs go one after another in the order given; compare runs of one invocation only
(they see about the same machine load). Each run's metrics.jsonl gives, at every
evaluation, `eval/elapsed_s`: the seconds since the run started (data build and
compilation included). Reports the final held-out exact accuracy, the first
evaluation at or above the target (90% for Sudoku and Maze) with its step and wall
time, the run's CPU seconds (user + system of the child: less sensitive to other
jobs' load than wall time) and for ARC the voted pass@2. Prints a table; the last
line is one JSON object keyed by run (`sudoku:trm,cpu`). Each run's console goes to
WORKDIR_ROOT/<run>.log. `--stop_at_target` stops a run (SIGTERM: it saves and exits
like a preempted run) once an evaluation reaches the target: time to accuracy
without the rest of the schedule.
"""
import argparse
import json
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGETS = {"sudoku": 0.9, "maze": 0.9, "arc": None}


def experiment_names() -> list[str]:
  return sorted(p.stem for p in (ROOT / "experiments").glob("*.py")
                if p.stem not in ("__init__", "common"))


def parse_runs(only: str, names: list[str]) -> list[tuple[str, str]]:
  """`--only` as (experiment, variant) pairs (module docstring for the syntax)."""
  runs: list[list] = []
  for chunk in only.split(";"):
    for token in (t.strip() for t in chunk.split(",")):
      if not token:
        continue
      name, colon, variant = token.partition(":")
      if name in names:
        runs.append([name, [variant] if variant else []])
      elif colon:
        raise SystemExit(f"--only: unknown experiment {name!r} in {token!r}; known: {names}.")
      elif runs and runs[-1][1]:  # a further variant token of the run before
        runs[-1][1].append(token)
      else:
        raise SystemExit(
            f"--only: {token!r} is not an experiment ({names}) and follows no "
            "`name:variant` to extend; write e.g. sudoku:trm,cpu.")
  if not runs:
    raise SystemExit("--only is empty; e.g. --only=sudoku,maze or --only=sudoku:trm,cpu.")
  return [(name, ",".join(tokens) if tokens else "cpu") for name, tokens in runs]


def read_evals(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if "eval/exact_accuracy" in r]


def children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def first_at_target(evals: list[dict], target: float | None) -> dict | None:
  return next((r for r in evals if target is not None
               and r["eval/exact_accuracy"] >= target), None)


def run_one(name: str, variant: str, root: pathlib.Path, stop_at_target: bool) -> dict:
  label = f"{name}:{variant}"
  slug = f"{name}_{variant.replace(',', '_')}"
  workdir, data_dir = root / slug, root / "data" / slug
  for path in (workdir, data_dir):
    shutil.rmtree(path, ignore_errors=True)
  cmd = [sys.executable, "-m", "hrm_jax.main", f"--config=experiments/{name}.py:{variant}",
         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
  log = root / f"{slug}.log"
  print("$", " ".join(cmd), f"> {log}", flush=True)
  target = TARGETS.get(name)
  t0, cpu0 = time.perf_counter(), children_cpu_s()
  stopped = False
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
      time.sleep(2)
      if stop_at_target and not stopped and first_at_target(read_evals(workdir), target):
        proc.send_signal(signal.SIGTERM)  # the run saves a checkpoint and stops
        stopped = True
  wall, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
  if proc.returncode and not (stopped and proc.returncode == 128 + signal.SIGTERM):
    print(log.read_text()[-3000:])
    raise SystemExit(f"{label}: training failed (exit {proc.returncode}; log {log})")
  evals = read_evals(workdir)
  hit = first_at_target(evals, target)
  last = evals[-1] if evals else {}
  return {
      "name": label, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
      "stopped_at_target": stopped,
      "steps": last.get("step"),
      "final_exact_accuracy": last.get("eval/exact_accuracy"),
      "target": target,
      "time_to_target_s": round(hit["eval/elapsed_s"], 1) if hit else None,
      "step_at_target": hit["step"] if hit else None,
      "evals": {r["step"]: round(r["eval/exact_accuracy"], 4) for r in evals},
      "pass@2": last.get("eval/arc/pass@2"),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="sudoku,maze,arc",
                      help="runs: bare names (their :cpu variant) or name:variant,...")
  parser.add_argument("--workdir_root", default=None)
  parser.add_argument("--stop_at_target", action="store_true",
                      help="stop each run (SIGTERM: it saves and exits) at its first "
                      "evaluation at or above the target: time to accuracy only")
  args = parser.parse_args()
  runs = parse_runs(args.only, experiment_names())
  root = pathlib.Path(args.workdir_root or tempfile.mkdtemp(prefix="hrm_cpu_learning_"))
  results = [run_one(name, variant, root, args.stop_at_target) for name, variant in runs]
  width = max(8, *(len(r["name"]) for r in results))
  fmt = lambda v, f: format(v, f) if v is not None else "-"
  print(f"\n{'config':{width}s} {'wall s':>7s} {'cpu s':>7s} {'steps':>6s} {'exact':>7s} "
        f"{'target':>7s} {'t->target s':>11s} {'at step':>7s} {'pass@2':>7s}")
  for r in results:
    print(f"{r['name']:{width}s} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} "
          f"{fmt(r['steps'], 'd'):>6s} {fmt(r['final_exact_accuracy'], '.3f'):>7s} "
          f"{fmt(r['target'], '.2f'):>7s} {fmt(r['time_to_target_s'], '.1f'):>11s} "
          f"{fmt(r['step_at_target'], 'd'):>7s} {fmt(r['pass@2'], '.3f'):>7s}")
  print(json.dumps({r["name"]: {k: v for k, v in r.items() if k != "name"} for r in results}))


if __name__ == "__main__":
  main()
