r"""Peak memory per device of every paper config, by the accelerators' own compilers.

  python benchmarks/paper_memory.py --python=/path/to/venv-with-extras/bin/python \
      [--out=/tmp/paper_memory.jsonl] [--only=paper,1gpu,t4,tpu] [--rows=NAME,...]
  python benchmarks/paper_memory.py --dry_run        # the rows and their commands

Each row is one `launch/compile_check.py --target=...` run in its own process
(the interpreter of --python must have the aot-gpu / aot-tpu extras): the
trainer's own step compiled by XLA's GPU or TPU compiler on this CPU. Groups:

  paper  each config on the hardware its paper used: HRM and the transformer
         baseline on 8 GPUs (H100 here; 96 rows each), TRM-MLP and TRM-Att
         Sudoku on 1 L40S, TRM Maze on 4 L40S (192 rows each), TRM ARC on 4 H100
  1gpu   one H100 at batch 768: the smallest grad_accum_steps k that fits
         without remat (compile_check --search --remat_options=none)
  t4     one 16 GB T4 at batch 768: the smallest k for remat none and blocks
         (k >= 4 on 30x30 grids; ties to the least recompute)
  tpu    TPU slices: v5e 4x4 (16 chips, 48 rows each) and v4-8 (4 chips, 8
         TensorCores, 96 rows each), k = 1

Results are appended to --out, one JSON line per row, and rows already there
are not compiled again (the script is resumable; delete a line to redo it).
Prints a Markdown table of every row in --out and, last, one JSON object.
"""
# pylint: disable=invalid-name
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
GiB = 1024 ** 3

# (name, model, task, config) of every paper config.
MODELS = [
    ("hrm-sudoku", "HRM", "Sudoku", "experiments/sudoku.py"),
    ("hrm-maze", "HRM", "Maze", "experiments/maze.py"),
    ("hrm-arc1", "HRM", "ARC-1", "experiments/arc.py"),
    ("hrm-arc2", "HRM", "ARC-2", "experiments/arc.py:arc2"),
    ("trm-mlp-sudoku", "TRM-MLP", "Sudoku", "experiments/sudoku.py:trm"),
    ("trm-att-sudoku", "TRM-Att", "Sudoku", "experiments/sudoku.py:trm_att"),
    ("trm-att-maze", "TRM-Att", "Maze", "experiments/maze.py:trm"),
    ("trm-att-arc1", "TRM-Att", "ARC-1", "experiments/arc.py:trm"),
    ("trm-att-arc2", "TRM-Att", "ARC-2", "experiments/arc.py:trm,arc2"),
    ("baseline-sudoku", "baseline", "Sudoku", "benchmarks/baseline_config.py:sudoku"),
    ("baseline-maze", "baseline", "Maze", "benchmarks/baseline_config.py:maze"),
    ("baseline-arc1", "baseline", "ARC-1", "benchmarks/baseline_config.py:arc"),
]
# The hardware of each paper (TRM README: Sudoku 1 L40S, Maze 4 L40S, ARC 4 H100).
PAPER_HARDWARE = {"HRM": ("h100", 8), "baseline": ("h100", 8),
                  ("TRM", "Sudoku"): ("l40s", 1), ("TRM", "Maze"): ("l40s", 4),
                  ("TRM", "ARC-1"): ("h100", 4), ("TRM", "ARC-2"): ("h100", 4)}


def paper_hardware(model: str, task: str) -> tuple[str, int]:
  if model.startswith("TRM"):
    return PAPER_HARDWARE[("TRM", task)]
  return PAPER_HARDWARE[model]


def rows() -> list[dict]:
  """Every row: {row, group, model, task, hardware, args (compile_check's)}."""
  out = []
  for name, model, task, config in MODELS:
    gpu, n = paper_hardware(model, task)
    base = [f"--config={config}", "--nocompare_k"]
    out.append({"row": f"paper/{name}", "group": "paper", "model": model, "task": task,
                "hardware": f"{n} x {gpu}", "args": base + [f"--target={gpu}",
                                                            f"--mesh=data:{n}"]})
  for name, model, task, config in MODELS:
    base = [f"--config={config}", "--nocompare_k", "--config.grad_accum_steps=1"]
    out.append({"row": f"1gpu/{name}", "group": "1gpu", "model": model, "task": task,
                "hardware": "1 x h100", "args": base + ["--target=h100", "--search",
                                                        "--remat_options=none"]})
    # 30x30 tasks cannot fit 11 GiB below k = 4 (41 GiB at k = 4 on an H100): start
    # there. "dots" keeps the float32 projections, more than the bf16 residuals of
    # "none" (BUILD_NOTES): not tried.
    min_k = 1 if task == "Sudoku" else 4
    out.append({"row": f"t4/{name}", "group": "t4", "model": model, "task": task,
                "hardware": "1 x t4", "args": base + ["--target=t4", "--search",
                                                      "--remat_options=none,blocks",
                                                      f"--min_k={min_k}"]})
  for topology, label in (("tpu:v5e:4x4", "v5e 4x4 (16 chips)"),
                          ("tpu:v4-8", "v4-8 (4 chips, 8 cores)")):
    for name, model, task, config in MODELS:
      out.append({"row": f"tpu/{topology[4:]}/{name}", "group": "tpu", "model": model,
                  "task": task, "hardware": label,
                  "args": [f"--config={config}", "--nocompare_k",
                           "--config.grad_accum_steps=1", f"--target={topology}"]})
  return out


def summarize(result: dict) -> dict:
  """The row's figures from compile_check's JSON line."""
  pick = result.get("pick")
  summary = {k: result.get(k) for k in (
      "target", "devices", "batch_per_device", "grad_accum_steps", "remat", "attention",
      "peak_bytes", "fits", "device_memory_bytes", "budget_bytes", "compile_seconds",
      "xla_temp_bytes", "xla_argument_bytes", "num_params")}
  if "sweep" in result and pick is not None:
    chosen = [e for e in result["sweep"] if (e["grad_accum_steps"], e["remat"]) ==
              (pick["grad_accum_steps"], pick["remat"])][0]
    summary.update(grad_accum_steps=pick["grad_accum_steps"], remat=pick["remat"],
                   peak_bytes=chosen["peak_estimate_bytes"], fits=True)
  if "pick" in result:
    summary["pick"] = pick
    summary["sweep"] = [(e["grad_accum_steps"], e["remat"], e["peak_estimate_bytes"])
                        for e in result.get("sweep", [])]
  return summary


def run_row(row: dict, python: str, timeout: int) -> dict:
  command = [python, "launch/compile_check.py", *row["args"]]
  start = time.time()
  try:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))
  except subprocess.TimeoutExpired:
    return {"error": f"timeout after {timeout} s", "wall_s": round(time.time() - start)}
  record = {"wall_s": round(time.time() - start, 1), "rc": proc.returncode}
  try:
    record.update(summarize(json.loads(proc.stdout.strip().splitlines()[-1])))
  except (IndexError, json.JSONDecodeError):
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    record["error"] = tail[0][-300:]
  return record


def first_fits(record: dict) -> str:
  """'none k=64 (10.0), blocks k=16 (7.6)': each remat's smallest k that fits (a search)."""
  budget, best = record.get("budget_bytes"), {}
  for k, remat, peak in record.get("sweep", []) if "pick" in record else []:
    if budget and peak <= budget and (remat not in best or k < best[remat][0]):
      best[remat] = (k, peak)
  return ", ".join(f"{r} k={k} ({p / GiB:.1f})" for r, (k, p) in best.items())


def table(records: list[dict]) -> str:
  lines = ["| row | model | task | hardware | rows/device | k | remat | attention | "
           "peak GiB/device | memory GiB x usable | fits | smallest k per remat |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    if "error" in r:
      lines.append(f"| {r['row']} | {r['model']} | {r['task']} | {r['hardware']} | "
                   f"| | | | error: {r['error'][:80]} | | | |")
      continue
    peak = r.get("peak_bytes")
    memory = r.get("device_memory_bytes") or 0
    budget = r.get("budget_bytes") or 0
    fits = "yes" if r.get("fits") else "no"
    if r.get("pick", "absent") is None:
      fits = "no (nothing tried fits)"
      peak = min(p for _, _, p in r["sweep"])
    lines.append(
        f"| {r['row']} | {r['model']} | {r['task']} | {r['hardware']} | "
        f"{r.get('batch_per_device')} | {r.get('grad_accum_steps')} | {r.get('remat')} | "
        f"{'none (mlp_t)' if r['model'] == 'TRM-MLP' else r.get('attention')} | {peak / GiB:.1f} | {memory / GiB:.1f} x "
        f"{budget / memory if memory else 0:.2f} | {fits} | {first_fits(r)} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--python", default=sys.executable,
                      help="interpreter with the aot-gpu/aot-tpu extras")
  parser.add_argument("--out", default="/tmp/paper_memory.jsonl")
  parser.add_argument("--only", default="paper,1gpu,t4,tpu", help="groups to run "
                      "(tpu-v5e / tpu-v4 for one slice of the tpu group)")
  parser.add_argument("--rows", default="", help="row names to run (default: all)")
  parser.add_argument("--timeout", type=int, default=1800, help="seconds per row")
  parser.add_argument("--dry_run", action="store_true")
  args = parser.parse_args()

  groups = set(filter(None, args.only.split(",")))
  wanted = set(filter(None, args.rows.split(",")))
  def chosen(r):
    slice_group = "tpu-" + r["row"].split("/")[1].split(":")[0].split("-")[0]
    return r["group"] in groups or (r["group"] == "tpu" and slice_group in groups)
  plan = [r for r in rows() if chosen(r) and (not wanted or r["row"] in wanted)]
  if args.dry_run:
    for r in plan:
      print(json.dumps({"row": r["row"], "command": " ".join(
          ["python", "launch/compile_check.py", *r["args"]])}))
    print(json.dumps({"rows": len(plan), "dry_run": True}))
    return
  out = pathlib.Path(args.out)
  done = {}
  if out.exists():
    for line in out.read_text().splitlines():
      record = json.loads(line)
      done[record["row"]] = record
  ran = 0
  for r in plan:
    if r["row"] in done:
      continue
    record = {k: r[k] for k in ("row", "group", "model", "task", "hardware")}
    record["command"] = " ".join(["python", "launch/compile_check.py", *r["args"]])
    record.update(run_row(r, args.python, args.timeout))
    with out.open("a") as f:
      f.write(json.dumps(record) + "\n")
    done[r["row"]] = record
    ran += 1
    print(f"{r['row']}: peak {record.get('peak_bytes') or 0:.3e} B, fits "
          f"{record.get('fits')} ({record['wall_s']} s){' ' + record['error'] if 'error' in record else ''}",
          flush=True)
  order = [r["row"] for r in rows()]
  records = sorted(done.values(), key=lambda r: order.index(r["row"])
                   if r["row"] in order else len(order))
  print(table(records))
  print(json.dumps({"rows_in_out": len(records), "ran_now": ran, "out": str(out),
                    "errors": sorted(r["row"] for r in records if "error" in r),
                    "fits": {r["row"]: r.get("fits") for r in records}}))


if __name__ == "__main__":
  main()
