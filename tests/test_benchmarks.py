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
