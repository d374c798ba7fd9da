"""The benchmark scripts run and end with one JSON line (figures not checked)."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_script(*args: str) -> tuple[str, dict]:
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  return proc.stdout, json.loads(lines[-1])


def test_train_step_benchmark_with_an_experiment_config():
  out, summary = run_script("benchmarks/train_step.py", "--config=experiments/maze.py:smoke",
                            "--steps=2", "--dtype=both", "--batch=8")
  # maze.py:smoke uses 7x7 mazes: the random batches take that shape, not 30x30.
  assert summary["bfloat16_examples_per_s"] > 0 and summary["float32_step_s"] > 0
  assert "bfloat16" in out and "float32" in out and "     8 " in out


def test_attention_benchmark_runs_dense_path_off_gpu():
  _, summary = run_script("benchmarks/attention.py", "--batch=2", "--seq=70", "--heads=2",
                          "--head_dim=8")
  assert summary["xla_fwd_bwd_ms"] > 0


def test_cpu_learning_runs_variants_with_commas_and_the_old_names():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import cpu_learning  # pylint: disable=import-outside-toplevel
  names = cpu_learning.experiment_names()
  assert cpu_learning.parse_runs("sudoku,maze,arc", names) == [
      ("sudoku", "cpu"), ("maze", "cpu"), ("arc", "cpu")]
  assert cpu_learning.parse_runs("sudoku:cpu,sudoku:trm,cpu,maze:trm,cpu;maze", names) == [
      ("sudoku", "cpu"), ("sudoku", "trm,cpu"), ("maze", "trm,cpu"), ("maze", "cpu")]


def test_cpu_learning_smoke_variant(tmp_path):
  out, summary = run_script("benchmarks/cpu_learning.py", "--only=sudoku:trm,smoke",
                            f"--workdir_root={tmp_path}")
  run = summary["sudoku:trm,smoke"]
  assert run["steps"] == 4 and sorted(run["evals"]) == ["2", "4"]
  assert 0.0 <= run["final_exact_accuracy"] <= 1.0 and run["cpu_s"] > 0
  assert "sudoku:trm,smoke" in out.splitlines()[-2]


def test_paper_memory_plan_and_resume(tmp_path):
  """The table's rows (paper hardware of each model, one H100, a T4, TPU slices) and
  its cache: a row in --out is not compiled again. A stand-in interpreter prints a
  compile_check JSON line instead of compiling (the real rows need the aot extras)."""
  out, summary = run_script("benchmarks/paper_memory.py", "--dry_run")
  plan = [json.loads(line) for line in out.strip().splitlines()[:-1]]
  assert summary["rows"] == len(plan) == 60
  commands = {p["row"]: p["command"] for p in plan}
  assert "--target=l40s --mesh=data:1" in commands["paper/trm-mlp-sudoku"]
  assert "--target=l40s --mesh=data:4" in commands["paper/trm-att-maze"]
  assert "--target=h100 --mesh=data:4" in commands["paper/trm-att-arc1"]
  assert "--target=h100 --mesh=data:8" in commands["paper/hrm-maze"]
  assert "--search" in commands["t4/trm-att-maze"] and "blocks" in commands["t4/hrm-arc1"]
  assert "--target=tpu:v5e:4x4" in commands["tpu/v5e:4x4/hrm-arc1"]
  fake = tmp_path / "fake_python"
  fake.write_text("#!/bin/sh\necho '{\"target\": \"h100\", \"devices\": 8, "
                  "\"batch_per_device\": 96, \"grad_accum_steps\": 1, \"remat\": \"none\", "
                  "\"attention\": \"cudnn\", \"peak_bytes\": 21474836480, \"fits\": true, "
                  "\"device_memory_bytes\": 85520809984, \"budget_bytes\": 64140607488}'\n")
  fake.chmod(0o755)
  args = ("benchmarks/paper_memory.py", f"--python={fake}", f"--out={tmp_path}/t.jsonl",
          "--rows=paper/hrm-maze")
  out, first = run_script(*args)
  assert first["ran_now"] == 1 and first["fits"] == {"paper/hrm-maze": True}
  assert "| paper/hrm-maze | HRM | Maze | 8 x h100 | 96 | 1 | none | cudnn | 20.0 | 79.6 x 0.75 | yes |" in out
  _, again = run_script(*args)
  assert again["ran_now"] == 0 and again["rows_in_out"] == 1
