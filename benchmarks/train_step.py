"""Throughput of the full HRM train step on this machine.

  python benchmarks/train_step.py [--dtype=bfloat16|float32|both] [--steps=20]

The "bench" config (issue 6): seq 81, vocab 11, hidden 128, 4 heads, expansion 4,
H_layers = L_layers = 2, H_cycles = L_cycles = 2, halt_max_steps 8, exploration 0.1,
batch 64, RoPE, one puzzle id. One step = ACT forward (+ the no-grad Q-target
segment), loss, backward through the last L and H update, AdamATan2, SignSGD.
Prints examples/s, median step time after warm-up, achieved GFLOP/s (model FLOPs
counted analytically) and peak memory; the last line is one JSON object.
"""
# pylint: disable=invalid-name
import argparse
import json
import resource
import statistics
import time

import jax
import ml_collections
import numpy as np

from hrm_jax import sharding, state as state_lib, steps
from hrm_jax.models import hrm, layers

BATCH = 64


def bench_config(dtype: str) -> hrm.HRMConfig:
  return hrm.HRMConfig(seq_len=81, vocab_size=11, num_puzzle_identifiers=1,
                       puzzle_emb_ndim=128, hidden_size=128, num_heads=4, expansion=4,
                       H_layers=2, L_layers=2, H_cycles=2, L_cycles=2, halt_max_steps=8,
                       halt_exploration_prob=0.1, pos_encodings="rope", forward_dtype=dtype)


def block_flops_per_token(cfg: hrm.HRMConfig) -> float:
  """Forward FLOPs of one transformer block per token (matmuls + attention)."""
  D, L = cfg.hidden_size, cfg.num_positions
  F = layers.swiglu_width(D, cfg.expansion)
  dense = 2 * D * 3 * D + 2 * D * D + 2 * D * 2 * F + 2 * F * D
  attention = 2 * 2 * L * D  # QK^T and PV
  return dense + attention


def train_step_flops(cfg: hrm.HRMConfig, batch: int) -> float:
  """Model FLOPs of one train step.

  Forward: two segments (the training one and the no-grad Q-target one), each
  with N*T L-updates and N H-updates. Backward: ~2x the forward of the final L
  and H update (the one-step gradient) and of the heads.
  """
  N, T = cfg.H_cycles, cfg.L_cycles
  tokens = batch * cfg.num_positions
  block = block_flops_per_token(cfg) * tokens
  segment = (N * T * cfg.L_layers + N * cfg.H_layers) * block
  heads = 2 * cfg.hidden_size * cfg.vocab_size * batch * cfg.seq_len
  grad_part = (cfg.L_layers + cfg.H_layers) * block + heads
  return 2 * (segment + heads) + 2 * grad_part


def measure(dtype: str, num_steps: int) -> dict:
  cfg = bench_config(dtype)
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  model = hrm.HRMInner(cfg)
  opt = ml_collections.ConfigDict(dict(
      lr=1e-4, lr_min_ratio=1.0, lr_warmup_steps=10, beta1=0.9, beta2=0.95,
      weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1))
  step_fn, tx = steps.make_train_step(model, opt, total_steps=10_000,
                                      global_batch_size=BATCH)
  state, state_sh = state_lib.create_sharded_state(model, tx, jax.random.key(0), mesh)
  carry, carry_sh = state_lib.create_sharded_carry(cfg, BATCH, mesh)
  jitted = jax.jit(step_fn, in_shardings=(state_sh, carry_sh, None, None),
                   out_shardings=(state_sh, carry_sh, None), donate_argnums=(0, 1))
  rng = np.random.default_rng(0)
  batches = [{"inputs": rng.integers(1, 11, (BATCH, 81)).astype(np.int32),
              "labels": rng.integers(2, 11, (BATCH, 81)).astype(np.int32),
              "puzzle_identifiers": np.zeros((BATCH,), np.int32)} for _ in range(4)]
  t0 = time.perf_counter()
  state, carry, m = jitted(state, carry, batches[0], jax.random.key(1))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for i in range(3):  # warm-up
    state, carry, m = jitted(state, carry, batches[i % 4], jax.random.key(1))
  jax.block_until_ready(m)
  times, cpu_times = [], []
  for i in range(num_steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, carry, m = jitted(state, carry, batches[i % 4], jax.random.key(1))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  step_s = statistics.median(times)
  flops = train_step_flops(cfg, BATCH)
  return {"dtype": dtype, "step_s": step_s, "examples_per_s": BATCH / step_s,
          "gflops_per_step": flops / 1e9, "achieved_gflop_s": flops / step_s / 1e9,
          "compile_s": compile_s,
          # CPU seconds per step over all threads: robust to other load on the box.
          "cpu_s_per_step": statistics.median(cpu_times)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dtype", default="both", choices=["bfloat16", "float32", "both"])
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  dtypes = ["bfloat16", "float32"] if args.dtype == "both" else [args.dtype]
  results = [measure(d, args.steps) for d in dtypes]
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"{'dtype':10s} {'ex/s':>8s} {'step ms':>8s} {'GFLOP/step':>11s} "
        f"{'GFLOP/s':>8s} {'compile s':>9s} {'cpu s/step':>10s}")
  for r in results:
    print(f"{r['dtype']:10s} {r['examples_per_s']:8.1f} {r['step_s'] * 1e3:8.1f} "
          f"{r['gflops_per_step']:11.2f} {r['achieved_gflop_s']:8.1f} {r['compile_s']:9.1f} "
          f"{r['cpu_s_per_step']:10.3f}")
  print(f"peak host memory (RSS): {peak_rss_mb:.0f} MB; device: {jax.devices()[0]}")
  summary = {f"{r['dtype']}_{k}": round(r[k], 4) for r in results
             for k in ("examples_per_s", "step_s", "achieved_gflop_s", "cpu_s_per_step")}
  summary["peak_rss_mb"] = round(peak_rss_mb, 1)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
