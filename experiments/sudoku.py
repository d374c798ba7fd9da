"""Sudoku-Extreme (9x9), the paper's "Sudoku-Extreme 1k" run.

Paper scale (default; 8 GPUs in the paper, ~10 min there; on one H100 the step
runs at 3,630 examples/s (BUILD_NOTES.md), ~1.5 h for the 26k steps):
  python -m hrm_jax.main --config=experiments/sudoku.py --workdir=/tmp/hrm_sudoku \
    --config.data.source=csv:/path/to/sudoku-extreme
Expected: eval/exact_accuracy ~0.55 (paper 55.0%; community runs 45-57%).
Without the CSV files, `source=generate` builds hard 9x9 puzzles locally.

CPU (2 cores, minutes): 6x6 boards, a tiny HRM, >= 90% exact accuracy on
held-out puzzles:
  python -m hrm_jax.main --config=experiments/sudoku.py:cpu --workdir=/tmp/hrm_sudoku_cpu

TRM (the Tiny Recursive Model, arXiv 2510.04871), same data:
  :trm      TRM-MLP, the paper's best Sudoku model (token-mixing MLP, no positions,
            n = 6, EMA 0.999, 50k epochs, eval every 5k: 10 x 6,510 = 65,100 updates
            at batch 768, over an LR schedule of the original's int(50000 * 1000 / 768)
            = 65,104 steps; 1 L40S, < 36 h in the paper). Expected ~0.87 (paper
            87.4%; 5,028,866 params).
            One GPU as shipped (batch 768, k = 1, no remat): XLA's GPU compiler puts
            the step at 32.8 GiB on an H100 and 33.0 GiB on an L40S, under 75% of
            the 79.6 / 45.0 GiB (`python launch/compile_check.py
            --config=experiments/sudoku.py:trm --target=l40s`; 94.6 GiB on the H100
            before the bf16 residuals of BUILD_NOTES "Accelerator compilers on a CPU").
  :trm_att  TRM-Att (self-attention, RoPE): paper 74.7% (6,828,034 params).
  :trm,cpu  a tiny TRM-MLP on the CPU variant's 6x6 boards: 98.8% exact at step 400,
            ~4 min on 2 cores, then 100% at 1600 (BUILD_NOTES.md, "TRM on 2 CPU cores").
"""
from experiments import common


# Variant tokens of --config=experiments/sudoku.py:TOKEN[,TOKEN] (none = the paper's).
VARIANTS = ("cpu", "smoke", "trm", "trm_att")


def get_config(arg: str | None = None):
  tokens = common.parse_arg(arg, VARIANTS)
  c = common.base_config("sudoku")
  common.small_sample_paper_settings(c)
  c.eval.max_batches = -1  # the full test set, as the paper
  if tokens & {"trm", "trm_att"}:
    common.trm_paper_settings(c, L_cycles=6, mlp_t="trm_att" not in tokens)
    c.epochs, c.eval.every_epochs = 50000, 5000  # TRM README

  if "cpu" in tokens:
    # Measured on 2 cores (BUILD_NOTES.md): 97% exact on 512 held-out boards in
    # 6.5 minutes (91% after 3.5), data generation and compilation included.
    c.data.board_size = 6  # 2x3 boxes, vocab 8, 36 cells
    # 16 blanks plateaued at ~84% (86% with 16 eval segments) within the budget.
    c.data.num_blanks = 14
    c.data.min_rating = 0  # small boards: no difficulty filter
    c.data.train_size = 20000  # fresh boards beat augmenting few (835 boards/s)
    c.data.num_aug = 0
    c.data.test_size = 512
    if tokens & {"trm", "trm_att"}:
      common.trm_cpu_recipe(c, total_steps=1600, eval_every=400)
    else:
      common.cpu_recipe(c, total_steps=1600, eval_every=400)
    c.eval.halt_max_steps = 8  # inference-time scaling: 8 segments (trained with 4)
  elif "smoke" in tokens:
    common.smoke(c)
    c.data.board_size = 4
    c.data.num_blanks = 6
    c.data.min_rating = 0
    c.data.train_size = 32
    c.data.num_aug = 1
    c.data.test_size = 32
  return c


def sweep(add):
  """The paper's sensitive hyperparameters, one run each."""
  for lr in (5e-5, 1e-4, 2e-4):
    add(**{"opt.lr": lr, "opt.puzzle_emb_lr": lr})
  for wd in (0.1, 1.0):
    add(**{"opt.weight_decay": wd, "opt.puzzle_emb_weight_decay": wd})
  for cycles in ((2, 2), (2, 4), (4, 4)):
    add(**{"model.H_cycles": cycles[0], "model.L_cycles": cycles[1]})
  for steps in (8, 16):
    add(**{"model.halt_max_steps": steps})
