"""Shared defaults and argument parsing of the experiment files.

Every experiment file exposes `get_config(arg=None)` and `sweep(add)`. The
argument is a comma-separated list of variant tokens: none = the paper's
configuration (accelerators), `cpu` = a small model and dataset that learn on a
2-core CPU in minutes, `smoke` = seconds, for tests; files add their own (e.g.
`arc2`), and tokens combine (`experiments/arc.py:arc2,cpu`). Each file lists
its tokens in a module-level `VARIANTS` tuple, which `list_experiments` reads
(without importing the file) for `python -m hrm_jax.main --help`.
"""
import ast
import dataclasses
import importlib.util
import os
import pathlib
import sys

import ml_collections

from hrm_jax import cpu_kind, data, models


def parse_arg(arg: str | None, known: tuple[str, ...]) -> frozenset[str]:
  """The variant tokens of `experiments/X.py:a,b` (big_vision style).

  '' or None is the paper configuration (no tokens). Every token must be one of
  `known`; an unknown one fails naming the known ones.
  """
  tokens = frozenset(t.strip() for t in (arg or "").split(",") if t.strip()) - {"paper"}
  unknown = sorted(tokens - set(known))
  if unknown:
    raise ValueError(f"Unknown config variant(s) {unknown}; known: {list(known)} "
                     "(combine with commas, e.g. experiments/arc.py:arc2,cpu).")
  return tokens


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One experiment file: its path (as a user would type it), the first line of
  its docstring and its variant tokens."""
  path: str
  summary: str
  variants: tuple[str, ...]


def _display_path(file: pathlib.Path) -> str:
  try:
    return os.path.relpath(file) if not os.path.relpath(file).startswith("..") else str(file)
  except ValueError:  # another drive
    return str(file)


def list_experiments() -> list[Experiment]:
  """Every experiment file next to this one, read with `ast` (nothing is run)."""
  found = []
  for file in sorted(pathlib.Path(__file__).resolve().parent.glob("*.py")):
    if file.name in ("__init__.py", "common.py"):
      continue
    tree = ast.parse(file.read_text(), str(file))
    variants = ()
    for node in tree.body:
      if (isinstance(node, ast.Assign) and len(node.targets) == 1
          and getattr(node.targets[0], "id", None) == "VARIANTS"):
        variants = tuple(ast.literal_eval(node.value))
    summary = (ast.get_docstring(tree) or "").strip().splitlines()
    found.append(Experiment(_display_path(file), summary[0] if summary else "",
                            variants))
  return found


def load_experiment(path: str):
  """Imports an experiment file by path, as `--config=PATH` does."""
  name = f"_hrm_experiment_{pathlib.Path(path).stem}"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def field_paths(config, prefix: str = "") -> list[str]:
  """Every leaf field of a config as a dotted path ("opt.lr", "seed", ...)."""
  paths = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      paths += field_paths(value, f"{prefix}{key}.")
    else:
      paths.append(f"{prefix}{key}")
  return paths


def base_config(family: str, arch: str = "hrm") -> ml_collections.ConfigDict:
  """The reference's `cfg_pretrain.yaml` + `hrm_v1.yaml` (spec §1.1, §4.4)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds init, the data order and ACT exploration.
  c.data = data.default_config(family)

  # Every field of the model family with its default (the family's config
  # dataclass is the one source: `hrm_jax/models/hrm.py`, `HRMConfig`).
  c.model = ml_collections.ConfigDict(models.default_fields(arch))

  c.batch_size = 768  # Global batch, split over processes and devices.
  # k > 1: each device runs its rows in k micro-batches inside the step and
  # applies one update (same numbers, 1/k of the activation memory); k must
  # divide the per-device batch. `launch/compile_check.py --device_memory=80GiB`
  # picks one.
  c.grad_accum_steps = 1
  # When the compiled step does not fit this device's memory (one GPU instead of the
  # paper's eight, a laptop), raise grad_accum_steps until it does and say so
  # (`hrm_jax/memory_fit.py`); False runs the step exactly as configured.
  c.auto_accumulate = True
  # The variant made for a CPU, named in the line a paper-scale run on a CPU logs
  # after its first step (with its time to the end); "" in the CPU/smoke variants.
  c.cpu_variant = f"experiments/{family}.py:cpu"
  c.epochs = 100000  # Reference epochs (one random variant per group each).
  c.total_steps = -1  # > 0 overrides the step count derived from epochs.

  c.opt = ml_collections.ConfigDict()
  c.opt.lr = 1e-4  # AdamATan2 on all dense weights.
  c.opt.lr_min_ratio = 1.0  # 1.0: warm-up then constant; < 1: cosine down to lr*ratio.
  c.opt.lr_warmup_steps = 2000
  c.opt.beta1 = 0.9
  c.opt.beta2 = 0.95
  c.opt.weight_decay = 0.1  # Decoupled, times lr.
  c.opt.puzzle_emb_lr = 1e-2  # SignSGD on the puzzle-embedding rows of the batch.
  c.opt.puzzle_emb_weight_decay = 0.1
  # True: the dense weights stay as they are (fine-tuning only the puzzle embeddings
  # of new puzzles, TRM's freeze_weights; use with init_from).
  c.opt.freeze_weights = False

  c.eval = ml_collections.ConfigDict()
  c.eval.type = "exact_match"  # Module in hrm_jax/evaluators/.
  c.eval.every_epochs = 10000  # The reference's eval_interval.
  c.eval.every_steps = -1  # > 0 overrides every_epochs.
  c.eval.batch_size = 768
  c.eval.max_batches = -1  # >= 0: evaluate only the first batches (quick looks).
  c.eval.halt_max_steps = -1  # > 0: segments at eval (inference-time scaling).
  c.eval.adaptive_halting = False  # Halt rows by the Q head instead of running M_max.
  # Test-time compute (hrm_jax/sampling.py): K trajectories per row, one batched run
  # (memory and time grow K-fold: lower eval.batch_size for large K).
  c.eval.num_samples = 1
  c.eval.latent_noise = 0.0  # Std of the Gaussian noise on z_H/z_L before each segment.
  c.eval.noise_on = "both"  # Where: "both" states, "z_L" alone (PTRM), "init" (C-voting).
  c.eval.select = "q_halt"  # Which of the K is the answer: sampling.SELECT_RULES.
  c.eval.sample_seed = 0  # Seeds the latent noise (batch i folds in i).
  # ARC: also vote over the predictions of the run's earlier evaluations (a checkpoint
  # ensemble, TRM's aggregated_voting), reported as arc/aggregated/pass@K.
  c.eval.aggregate_votes = False

  c.mesh = "data:-1,fsdp:1"  # axis:size pairs; one -1 takes the remaining devices.
  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every_steps = 2000
  c.ckpt.max_to_keep = 3
  c.ckpt.async_save = True
  c.log_every_steps = 100
  # > 0: checkpoint and exit cleanly after this step (time-boxed cluster jobs);
  # rerunning the same command resumes.
  c.stop_at_step = -1
  c.enable_x64 = False  # True: float64 stablemax exactly as the reference (slower).
  # > 0: keep an exponential moving average of the weights at this decay, used for
  # evaluation, checkpoints' users and the tools (TRM: 0.999; off for HRM).
  c.ema_rate = 0.0
  # A workdir (or `convert` output) whose weights start a fresh run (fine-tuning);
  # ignored when WORKDIR has its own checkpoint (resume order in hrm_jax/train.py).
  c.init_from = ""
  # > 0: a jax.profiler trace of this many steps, started after the first progress
  # line (compilation over), written to WORKDIR/profile (TensorBoard / Perfetto).
  c.profile_steps = 0
  return c


def small_sample_paper_settings(c: ml_collections.ConfigDict) -> None:
  """README overrides shared by Sudoku-Extreme-1k and Maze-Hard-1k (spec §4.5):
  epochs=20000 eval_interval=2000 lr=puzzle_emb_lr=1e-4, both weight decays 1.0
  (26,041 steps at batch 768)."""
  c.epochs = 20000
  c.eval.every_epochs = 2000
  c.opt.lr = 1e-4
  c.opt.puzzle_emb_lr = 1e-4
  c.opt.weight_decay = 1.0
  c.opt.puzzle_emb_weight_decay = 1.0


def trm_paper_settings(c: ml_collections.ConfigDict, L_cycles: int,
                       mlp_t: bool = False) -> None:
  """The TRM family with the README's settings common to every TRM run (spec §5):
  hidden 512, 8 heads, 2 layers, T = H_cycles 3, n = `L_cycles`, N_sup 16, 16
  prefix tokens, bf16; EMA 0.999. `mlp_t`: the token-mixing MLP with no positions
  (Sudoku-MLP); otherwise attention with RoPE."""
  c.model = ml_collections.ConfigDict(models.default_fields("trm"))
  c.model.L_cycles = L_cycles
  c.model.mlp_t = mlp_t
  c.model.pos_encodings = "none" if mlp_t else "rope"
  c.ema_rate = 0.999
  c.cpu_variant = c.cpu_variant.replace(":cpu", ":trm,cpu")


# The baseline's heads in the TRM repo's `config/arch/transformers_baseline.yaml`
# (head dim 42 on hidden 512: attention runs on the dense XLA path, cuDNN's flash
# attention needs a multiple of 8).
BASELINE_NUM_HEADS = 12


def baseline_settings(c: ml_collections.ConfigDict) -> None:
  """The ARC Prize analysis's plain-transformer baseline in place of HRM (the TRM
  repo's `transformers_baseline.py` and its yaml): one stack of 8 post-norm blocks,
  hidden 512, 12 heads, expansion 4, RoPE, one call per segment, 16 segments; the
  `transformer` family's defaults but the heads. The run's data, batch and optimiser
  stay HRM's."""
  c.model = ml_collections.ConfigDict(models.default_fields("transformer"))
  c.model.num_heads = BASELINE_NUM_HEADS


def shrink_for_cpu(c: ml_collections.ConfigDict, hidden: int = 64, heads: int = 2,
                   layers: int = 1, dtype: str = "float32") -> None:
  """A tiny model of the config's family (float32 unless told: `cpu_recipe` asks
  for bfloat16, faster there)."""
  c.model.hidden_size = hidden
  c.model.num_heads = heads
  c.model.puzzle_emb_ndim = hidden
  for field in ("H_layers", "L_layers"):  # the layer counts this family has
    if field in c.model and c.model[field] > 0:
      c.model[field] = layers
  if "puzzle_emb_len" in c.model:  # TRM: one prefix token for a small model
    c.model.puzzle_emb_len = 1
  c.model.forward_dtype = dtype
  c.mesh = "data:-1,fsdp:1"
  c.cpu_variant = ""  # made for a CPU already


def cpu_recipe(c: ml_collections.ConfigDict, total_steps: int, eval_every: int) -> None:
  """What learned fastest per wall second on 2 cores (BUILD_NOTES.md, "CPU learning").

  Tiny HRM (hidden 64, 4 heads, 2 layers per module, RoPE), M=4 segments (M=8 was
  slower per second), lr 2e-3 after 100 warm-up steps then cosine to 2e-4, batch
  128. Activations in bfloat16 where the CPU has bf16 units (AVX512_BF16 or
  AMX: 1.5x the float32 step rate on a 2-core AVX-512 CPU), float32 elsewhere
  (`hrm_jax.cpu_kind`: the detection and the resume rule); the same steps and
  schedule either way. `config.cpu_auto_dtype` records the automatic choice
  (a resumed run keeps the dtype it started with: `cpu_kind.resume_dtype`);
  --config.model.forward_dtype overrides it.
  """
  dtype = cpu_kind.recipe_dtype()
  shrink_for_cpu(c, hidden=64, heads=4, layers=2, dtype=dtype)
  c.cpu_auto_dtype = dtype
  c.model.H_cycles = 2
  c.model.L_cycles = 2
  c.model.halt_max_steps = 4
  c.batch_size = 128
  c.total_steps = total_steps
  c.opt.lr = 2e-3
  c.opt.puzzle_emb_lr = 2e-3
  c.opt.weight_decay = 0.1
  c.opt.puzzle_emb_weight_decay = 0.1
  c.opt.lr_warmup_steps = 100
  # Cosine decay to a tenth: a constant lr left held-out accuracy swinging by
  # several points between evaluations (Sudoku 90-96%, mazes 35-70%).
  c.opt.lr_min_ratio = 0.1
  c.eval.every_steps = eval_every
  c.eval.batch_size = 256
  c.ckpt.every_steps = eval_every
  c.log_every_steps = 50


def trm_cpu_recipe(c: ml_collections.ConfigDict, total_steps: int, eval_every: int) -> None:
  """A tiny TRM for 2 cores: `cpu_recipe`'s optimiser and batch, T = 2 cycles of
  n = 2 latent updates (6 network calls a segment, 3 differentiated), one prefix
  token, EMA 0.99 (0.999 averages over more steps than the run has). Measured
  beside HRM's recipe in one `benchmarks/cpu_learning.py` run (BUILD_NOTES.md,
  "TRM on 2 CPU cores"): 6x6 Sudoku 98.8% exact at step 400 (HRM: 23.4%; 90.6%
  at 800), 1.45x HRM's time per step."""
  cpu_recipe(c, total_steps, eval_every)
  c.model.H_cycles = 2
  c.model.L_cycles = 2
  c.ema_rate = 0.99


def smoke(c: ml_collections.ConfigDict) -> None:
  """Seconds-long runs for tests: a few steps of a minute model on tiny data."""
  shrink_for_cpu(c, hidden=32, heads=2, layers=1)
  if "H_cycles" in c.model:  # TRM: 2, so that one cycle runs without gradient
    c.model.H_cycles = 2 if c.model.arch == "trm" else 1
  if "L_cycles" in c.model:
    c.model.L_cycles = 2
  c.model.halt_max_steps = 2
  c.batch_size = 16
  c.total_steps = 4
  c.opt.lr_warmup_steps = 2
  c.eval.every_steps = 2
  c.eval.batch_size = 16
  c.eval.max_batches = 2
  c.ckpt.every_steps = 2
  c.ckpt.async_save = False
  c.log_every_steps = 1
