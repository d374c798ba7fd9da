"""Time to accuracy of the CPU experiment variants on this machine.

  python benchmarks/cpu_learning.py [--only=sudoku,maze,arc] [--workdir_root=DIR]

Runs `python -m hrm_jax.main --config=experiments/<name>.py:cpu` for each benchmark
from scratch (data built locally, nothing downloaded), then reads the run's
metrics.jsonl: every evaluation carries `eval/elapsed_s`, the seconds since the run
started (data build and compilation included). Reports the final held-out exact
accuracy, the first evaluation at or above the target (90% for Sudoku and Maze) and
its wall time, and for ARC the voted pass@k. Prints a table; the last line is one
JSON object.
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

TARGETS = {"sudoku": 0.9, "maze": 0.9, "arc": None}


def read_evals(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if "eval/exact_accuracy" in r]


def run_one(name: str, root: pathlib.Path, data_dir: pathlib.Path) -> dict:
  workdir = root / name
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, "-m", "hrm_jax.main", f"--config=experiments/{name}.py:cpu",
         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
  print("$", " ".join(cmd), flush=True)
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode:
    print(proc.stderr[-3000:])
    raise SystemExit(f"{name}: training failed (exit {proc.returncode})")
  evals = read_evals(workdir)
  target = TARGETS[name]
  hit = next((r for r in evals if target is not None
              and r["eval/exact_accuracy"] >= target), None)
  last = evals[-1] if evals else {}
  return {
      "name": name, "wall_s": round(wall, 1), "steps": last.get("step"),
      "final_exact_accuracy": last.get("eval/exact_accuracy"),
      "target": target,
      "time_to_target_s": round(hit["eval/elapsed_s"], 1) if hit else None,
      "step_at_target": hit["step"] if hit else None,
      "pass@2": last.get("eval/arc/pass@2"),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="sudoku,maze,arc")
  parser.add_argument("--workdir_root", default=None)
  args = parser.parse_args()
  root = pathlib.Path(args.workdir_root or tempfile.mkdtemp(prefix="hrm_cpu_learning_"))
  data_dir = root / "data"
  results = [run_one(name, root, data_dir) for name in args.only.split(",")]
  print(f"\n{'config':8s} {'wall s':>7s} {'steps':>6s} {'exact':>7s} {'target':>7s} "
        f"{'t->target s':>11s} {'pass@2':>7s}")
  for r in results:
    fmt = lambda v, f: format(v, f) if v is not None else "-"
    print(f"{r['name']:8s} {r['wall_s']:7.1f} {fmt(r['steps'], '6d'):>6s} "
          f"{fmt(r['final_exact_accuracy'], '.3f'):>7s} {fmt(r['target'], '.2f'):>7s} "
          f"{fmt(r['time_to_target_s'], '.1f'):>11s} {fmt(r['pass@2'], '.3f'):>7s}")
  print(json.dumps({r["name"]: {k: v for k, v in r.items() if k != "name"} for r in results}))


if __name__ == "__main__":
  main()
