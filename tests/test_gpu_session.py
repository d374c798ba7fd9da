"""The prepared accelerator script and the benchmark's machine report, on a CPU.

`benchmarks/gpu_session.py` cannot measure a GPU here; its plan (--dry_run)
and one of its measurements on a smoke config (--tiny) must run, and
`benchmarks/train_step.py` must report the CPU kind in its JSON line.
"""
import json
import os
import pathlib
import subprocess
import sys

from experiments import maze as maze_exp
from experiments import sudoku as sudoku_exp
from hrm_jax import cpu_kind

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, timeout=600):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as on the GPU machine
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_gpu_session_plan_covers_the_issue():
  plan = _run("benchmarks/gpu_session.py", "--dry_run")
  names = [p["measurement"] for p in plan]
  for name in ("sudoku_paper_xla", "sudoku_paper_cudnn", "maze_paper_b96_cudnn",
               "maze_1gpu", "arc_1gpu", "profile_sudoku_paper"):
    assert name in names
  by_name = {p["measurement"]: p for p in plan}
  assert "--config=experiments/maze.py:1gpu" in by_name["maze_1gpu"]["command"]
  assert "--batch=96" in by_name["maze_paper_b96_cudnn"]["command"]
  assert "attention_impl=cudnn" in by_name["maze_paper_b96_cudnn"]["command"]
  assert "--profile_dir=" in by_name["profile_sudoku_paper"]["command"]
  # Well within the 10-minute limit of one device command, even if all time out.
  assert sum(p["timeout_s"] for p in plan) <= 1800


def test_gpu_session_tiny_runs_a_measurement(tmp_path):
  lines = _run("benchmarks/gpu_session.py", "--tiny", f"--out_dir={tmp_path}",
               "--only=maze_1gpu,profile_sudoku_paper")
  imports, accum, profile = lines
  assert imports["measurement"] == "imports" and imports["missing"] == []
  assert accum["measurement"] == "maze_1gpu" and accum["rc"] == 0, accum
  # The k of the :1gpu variant (experiments/maze.py), with the smoke batch of 16.
  assert accum["grad_accum_steps"] == maze_exp.ONE_GPU_ACCUM_STEPS and accum["batch"] == 16
  # The smoke configs' own dtype (no --dtype in the plan).
  maze_dtype = maze_exp.get_config("smoke,1gpu").model.forward_dtype
  sudoku_dtype = sudoku_exp.get_config("smoke").model.forward_dtype
  assert accum[f"{maze_dtype}_examples_per_s"] > 0
  ops = profile[f"{sudoku_dtype}_profile_top_ops"]
  assert ops["by_kind"] and ops["op_ms_per_step"] > 0
  assert any("dot" in name or "fusion" in name for name, _, _ in ops["by_kind"])
  saved = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert [s["measurement"] for s in saved] == ["imports", "maze_1gpu",
                                               "profile_sudoku_paper"]


def test_train_step_benchmark_reports_the_cpu_kind():
  (summary,) = _run("benchmarks/train_step.py", "--config=experiments/sudoku.py:smoke",
                    "--steps=1", "--dtype=float32", "--batch=8")
  kind = cpu_kind.detect()
  assert summary["cpu_model"] == kind.model_name
  assert summary["cpu_bf16_units"] == kind.has_bf16_units
  assert summary["cpu_bf16_flags"] == list(kind.bf16_flags)
  assert summary["backend"] == "cpu" and summary["float32_model_tflop_s"] > 0
