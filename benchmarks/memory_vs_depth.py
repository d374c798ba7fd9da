"""Compiled memory of one training step as the recurrence gets deeper.

HRM's claim (spec §1.3) is that the one-step gradient makes training memory
independent of the number of recurrent updates N*T per segment: only the last
L and H update are differentiated, so nothing of the N*T-2 earlier updates has
to be kept for the backward pass. Backpropagation through time (BPTT) keeps
every update's activations, so its memory grows linearly with N*T.

This script checks that claim on the compiled XLA program instead of trusting
it: for N*T in {4, 16, 64} it builds the trainer's own train step
(`steps.build_train_step`: reset_halted, act_step(training=True), act_loss,
gradients w.r.t. params and the gathered puzzle rows, the AdamATan2 update and
the sparse SignSGD update of the puzzle-embedding table; state and carry
donated), compiles it, and reads XLA's `memory_analysis()`.
It never runs the step, so it takes seconds to a minute on a CPU and needs no
accelerator (the buffer assignment is the compiler's, per backend: numbers on
a GPU/TPU differ in detail but not in how they scale).

    python benchmarks/memory_vs_depth.py [--dtypes=bfloat16,float32]

Prints a table and, as the last line, one JSON object. Exits 1 if the
one-step-gradient model's temporary memory grows by more than --max_ratio
from N*T = 4 to N*T = 64.
"""
# pylint: disable=invalid-name
import dataclasses
import json
import sys
import time

from absl import app
from absl import flags
import jax
import ml_collections

from hrm_jax import sharding, steps
from hrm_jax.models import hrm, trm

_DTYPES = flags.DEFINE_list(
    "dtypes", ["bfloat16", "float32"],
    "Forward dtypes to measure; the first is the one the JSON's top-level "
    "numbers and the exit status are about.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_MAX_RATIO = flags.DEFINE_float(
    "max_ratio", 1.1, "Largest allowed one-step temp(N*T=64) / temp(N*T=4).")

# (H_cycles, L_cycles): N*T = 4, 16, 64.
DEPTHS = ((2, 2), (4, 4), (8, 8))
MB = 1024 * 1024
OPT = ml_collections.ConfigDict(dict(
    lr=1e-4, lr_min_ratio=1.0, lr_warmup_steps=100, beta1=0.9, beta2=0.95,
    weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1))


def small_config(H_cycles: int, L_cycles: int, dtype: str) -> hrm.HRMConfig:
  """A Sudoku-shaped model, small enough to compile quickly on a CPU."""
  return hrm.HRMConfig(
      seq_len=81, vocab_size=11, num_puzzle_identifiers=1000, puzzle_emb_ndim=128,
      H_cycles=H_cycles, L_cycles=L_cycles, H_layers=2, L_layers=2,
      hidden_size=128, num_heads=4, halt_max_steps=8, forward_dtype=dtype)


# TRM: T = H_cycles cycles at a fixed n = L_cycles; its gradient runs through the
# n + 1 calls of the last cycle, so memory may grow with n but must not with T.
TRM_CYCLES = (1, 2, 4, 8)
TRM_N = 2


def small_trm_config(H_cycles: int, dtype: str) -> trm.TRMConfig:
  return trm.TRMConfig(
      seq_len=81, vocab_size=11, num_puzzle_identifiers=1000, puzzle_emb_ndim=128,
      puzzle_emb_len=1, H_cycles=H_cycles, L_cycles=TRM_N, L_layers=2, hidden_size=128,
      num_heads=4, halt_max_steps=8, forward_dtype=dtype)


def measure(cfg, batch_size: int) -> dict[str, float]:
  """Compiles the trainer's step for `cfg` on one device; XLA's memory figures."""
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  program = steps.build_train_step(cfg, OPT, total_steps=10_000,
                                   global_batch_size=batch_size, mesh=mesh)
  start = time.perf_counter()
  compiled = program.step.lower(*program.abstract_args()).compile()
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  if stats is None:
    raise RuntimeError(f"memory_analysis() is unavailable on {jax.default_backend()}.")
  return {
      "temp_mb": stats.temp_size_in_bytes / MB,
      "argument_mb": stats.argument_size_in_bytes / MB,
      "output_mb": stats.output_size_in_bytes / MB,
      "alias_mb": stats.alias_size_in_bytes / MB,
      "compile_s": seconds,
  }


def main(argv):
  del argv
  B = _BATCH.value
  print(f"backend={jax.default_backend()}  batch={B}  hidden=128  heads=4  "
        "H_layers=L_layers=2  seq=81(+1 puzzle token)  vocab=11")
  header = (f"{'dtype':>8} {'gradient':>9} {'N x T':>6} {'N*T':>4} {'temp MB':>9} "
            f"{'args MB':>8} {'out MB':>7} {'alias MB':>8} {'compile s':>9}")
  print(header)
  print("-" * len(header))
  results = {}
  for dtype in _DTYPES.value:
    for mode in ("one_step", "bptt"):
      for N, T in DEPTHS:
        cfg = small_config(N, T, dtype)
        if mode == "bptt":
          cfg = dataclasses.replace(cfg, one_step_gradient=False)
        r = measure(cfg, B)
        results.setdefault(dtype, {}).setdefault(mode, {})[str(N * T)] = r
        print(f"{dtype:>8} {mode:>9} {f'{N}x{T}':>6} {N * T:>4} {r['temp_mb']:>9.2f} "
              f"{r['argument_mb']:>8.2f} {r['output_mb']:>7.2f} {r['alias_mb']:>8.2f} "
              f"{r['compile_s']:>9.1f}", flush=True)

  def summary(dtype):
    temps = {mode: {k: round(v["temp_mb"], 3) for k, v in results[dtype][mode].items()}
             for mode in ("one_step", "bptt")}
    return {
        "one_step_temp_mb": temps["one_step"],
        "bptt_temp_mb": temps["bptt"],
        "one_step_ratio_64_over_4": round(temps["one_step"]["64"] / temps["one_step"]["4"], 3),
        "bptt_ratio_64_over_4": round(temps["bptt"]["64"] / temps["bptt"]["4"], 3),
    }

  print(f"\nTRM (n = L_cycles = {TRM_N}, 2 layers, same shapes): T = H_cycles cycles")
  trm_temps = {}
  for dtype in _DTYPES.value:
    for T in TRM_CYCLES:
      r = measure(small_trm_config(T, dtype), B)
      trm_temps.setdefault(dtype, {})[str(T)] = round(r["temp_mb"], 3)
      print(f"{dtype:>8} {'trm':>9} {f'T={T}':>6} {T * (TRM_N + 1):>4} "
            f"{r['temp_mb']:>9.2f} {r['argument_mb']:>8.2f} {r['output_mb']:>7.2f} "
            f"{r['alias_mb']:>8.2f} {r['compile_s']:>9.1f}", flush=True)

  primary = _DTYPES.value[0]
  report = {"dtype": primary, "batch_size": B, **summary(primary),
            "by_dtype": {d: summary(d) for d in _DTYPES.value}}
  first, last = str(TRM_CYCLES[0]), str(TRM_CYCLES[-1])
  report["trm"] = {d: {"temp_mb": t, f"ratio_T{last}_over_T{first}":
                       round(t[last] / t[first], 3)} for d, t in trm_temps.items()}
  failures = [d for d in _DTYPES.value
              if report["by_dtype"][d]["one_step_ratio_64_over_4"] > _MAX_RATIO.value]
  for d in failures:
    print(f"FAIL ({d}): one-step-gradient temp memory grows "
          f"{report['by_dtype'][d]['one_step_ratio_64_over_4']}x from N*T=4 to 64 "
          f"(allowed {_MAX_RATIO.value}x): something of the no-gradient updates is "
          "kept for the backward pass.")
  for d, r in report["trm"].items():
    if r[f"ratio_T{last}_over_T{first}"] > _MAX_RATIO.value:
      failures.append(d)
      print(f"FAIL ({d}): TRM temp memory grows {r[f'ratio_T{last}_over_T{first}']}x "
            f"from T={first} to T={last} cycles: the no-gradient cycles are kept.")
  print(json.dumps(report))
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  app.run(main)
