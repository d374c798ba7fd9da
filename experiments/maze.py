"""Maze-Hard (30x30 mazes, shortest path longer than 110), the paper's Maze run.

Paper scale (default; 8 GPUs in the paper, ~1 h there; one H100 runs 96 rows of the
batch at 369 examples/s in 19.5 GiB, so 8 of them take ~0.26 s a step, ~2 h in all):
  python -m hrm_jax.main --config=experiments/maze.py --workdir=/tmp/hrm_maze \
    --config.data.source=csv:/path/to/maze-30x30-hard-1k
Expected: eval/exact_accuracy ~0.745 (paper 74.5%).
Without the CSV files, `source=generate` builds Maze-Hard-like mazes locally.

One GPU (`:1gpu`): the paper's run unchanged (global batch 768, every
hyperparameter) with the batch run in 4 micro-batches of 192 rows inside each
step (gradient accumulation: one update per 768 rows, the same numbers):
  python -m hrm_jax.main --config=experiments/maze.py:1gpu --workdir=/tmp/hrm_maze_1gpu \
    --config.data.source=csv:/path/to/maze-30x30-hard-1k
How k = 4 was chosen (BUILD_NOTES.md, "Accelerator compilers on a CPU"): XLA's
GPU compiler for an H100 (`python launch/compile_check.py
--config=experiments/maze.py:1gpu --target=h100 --config.grad_accum_steps=1
--search --remat_options=none`; bf16, cuDNN flash attention) puts the step's
peak at 138.6 / 70.2 / 41.5 GiB for k = 1 / 2 / 4: k = 4 is the smallest
that fits 59.7 GiB (JAX preallocates 75% of the 79.6 GiB), without remat.
(The CPU compiler's estimate had been 472 / 240 / 122 / 64 / 34 GiB for
k = 1 ... 16, whence the earlier k = 16.) The measured GPU peak is still open
(benchmarks/gpu_session.py: maze_1gpu, and maze_1gpu_k2 for the next smaller k,
which fits an H200's 105 GiB).

CPU (2 cores): small mazes with the same charset and rules:
  python -m hrm_jax.main --config=experiments/maze.py:cpu --workdir=/tmp/hrm_maze_cpu
Measured on a 2-core CPU (BUILD_NOTES.md): 91% exact on 512 held-out 7x7 mazes
after 2000 steps (10 minutes, data and compilation included), 99% at 3000 (15 min).

TRM (arXiv 2510.04871):
  :trm      TRM-Att on Maze-Hard (n = 4, EMA 0.999, 50k epochs, eval every 5k:
            10 x 6,510 = 65,100 updates, over an LR schedule of the original's
            int(50000 * 1000 / 768) = 65,104 steps; 4 L40S, < 24 h in the paper). Expected ~0.85 (paper 85.3%;
            6,822,914 params). On the paper's 4 L40S add --config.grad_accum_steps=2:
            XLA's GPU compiler puts 192 rows per GPU at 39.4 GiB (k = 1) / 18.8 GiB
            (k = 2) against 75% of 45 GiB (BUILD_NOTES "Accelerator compilers on a CPU").
  :trm,cpu  a tiny TRM on the CPU variant's 7x7 mazes (BUILD_NOTES.md).
"""
from experiments import common


# Variant tokens of --config=experiments/maze.py:TOKEN[,TOKEN] (none = the paper's).
VARIANTS = ("cpu", "smoke", "trm", "1gpu")


def get_config(arg: str | None = None):
  tokens = common.parse_arg(arg, VARIANTS)
  c = common.base_config("maze")
  common.small_sample_paper_settings(c)
  if "trm" in tokens:
    common.trm_paper_settings(c, L_cycles=4)
    c.epochs, c.eval.every_epochs = 50000, 5000  # TRM README

  if "cpu" in tokens:
    # 7x7 mazes (49 cells), shortest path > 8 moves. The Sudoku recipe, but at
    # lr 2e-3 mazes learned then collapsed; lr 1e-3 with a cosine decay to 1e-4 was
    # the fastest stable setting of a 36-run sweep (BUILD_NOTES.md, "Maze CPU").
    c.data.grid_size = 7
    c.data.train_size = 20000
    c.data.test_size = 512
    (common.trm_cpu_recipe if "trm" in tokens else common.cpu_recipe)(
        c, total_steps=3000, eval_every=500)
    c.opt.lr = 1e-3
    c.opt.puzzle_emb_lr = 1e-3
  elif "smoke" in tokens:
    common.smoke(c)
    c.data.grid_size = 7
    c.data.train_size = 32
    c.data.test_size = 32
  if "1gpu" in tokens:
    c.grad_accum_steps = ONE_GPU_ACCUM_STEPS
  return c


# Micro-batches per step of `:1gpu`: 41.5 GiB peak on the GPU compiler (H100), the
# smallest k under 59.7 GiB (module docstring).
ONE_GPU_ACCUM_STEPS = 4


def sweep(add):
  for lr in (5e-5, 1e-4, 2e-4):
    add(**{"opt.lr": lr, "opt.puzzle_emb_lr": lr})
  for wd in (0.1, 1.0):
    add(**{"opt.weight_decay": wd, "opt.puzzle_emb_weight_decay": wd})
  for cycles in ((2, 2), (2, 4)):
    add(**{"model.H_cycles": cycles[0], "model.L_cycles": cycles[1]})
  for steps in (8, 16):
    add(**{"model.halt_max_steps": steps})
