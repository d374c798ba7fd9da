"""Throughput of the full HRM train step on this machine.

  python benchmarks/train_step.py [--dtype=bfloat16|float32|both] [--steps=20]
  python benchmarks/train_step.py --config=experiments/maze.py [--batch=N] [--dtype=...]

Without --config: the "bench" config (issue 6): seq 81, vocab 11, hidden 128,
4 heads, expansion 4, H_layers = L_layers = 2, H_cycles = L_cycles = 2,
halt_max_steps 8, exploration 0.1, batch 64, RoPE, one puzzle id.
With --config: that experiment's model, optimizer and global batch (or --batch)
on random tokens of its dataset's shape (`hrm_jax.data.shape`: no dataset is
built), in the config's dtype unless --dtype says otherwise; all on one device.
The step is the trainer's own (`steps.build_train_step`).

One step = ACT forward (+ the no-grad Q-target segment), loss, backward through
the last L and H update, AdamATan2, SignSGD. Prints examples/s, median step time
after warm-up, achieved GFLOP/s and model TFLOP/s (model matmul FLOPs counted
analytically by the family's `train_step_flops`), peak memory and the machine:
the CPU kind (`hrm_jax.cpu_kind`: model name, whether it has bf16 units, which
decides the CPU recipes' dtype) and the accelerator, if any. The last line is
one JSON object. `config.grad_accum_steps` and `config.model.*` apply as in
training (e.g. --config.grad_accum_steps=8 --config.model.attention_impl=cudnn).

`--profile_dir=DIR` also records a `jax.profiler` trace of 3 steps after the
timed ones and prints the ops that took the most time, summed by name (the
JSON line gets `<dtype>_profile_top_ops`); open DIR in TensorBoard/Perfetto for
the timeline.
"""
# pylint: disable=invalid-name
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import resource
import statistics
import time

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from hrm_jax import cpu_kind, data, models, sharding, steps  # pylint: disable=wrong-import-position
from hrm_jax.models import hrm  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file (e.g. experiments/maze.py); default: the bench config.",
    lock_config=True)
_DTYPE = flags.DEFINE_enum("dtype", None, ["bfloat16", "float32", "both"],
                           "Forward dtype(s); default both for the bench config, the "
                           "config's own with --config.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after compile and 3 warm-up).")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch (default: 64, or the config's).")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Record a jax.profiler trace of 3 steps here and print the "
    "top ops by time.")
_TOP_OPS = flags.DEFINE_integer("top_ops", 15, "Ops listed from the profile.")

BENCH_BATCH = 64
BENCH_OPT = dict(lr=1e-4, lr_min_ratio=1.0, lr_warmup_steps=10, beta1=0.9, beta2=0.95,
                 weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1)


def bench_config(dtype: str) -> hrm.HRMConfig:
  return hrm.HRMConfig(seq_len=81, vocab_size=11, num_puzzle_identifiers=1,
                       puzzle_emb_ndim=128, hidden_size=128, num_heads=4, expansion=4,
                       H_layers=2, L_layers=2, H_cycles=2, L_cycles=2, halt_max_steps=8,
                       halt_exploration_prob=0.1, pos_encodings="rope", forward_dtype=dtype)


def random_batches(cfg, batch: int, count: int = 4) -> list[dict]:
  rng = np.random.default_rng(0)
  shape = (batch, cfg.seq_len)
  return [{"inputs": rng.integers(1, cfg.vocab_size, shape).astype(np.int32),
           "labels": rng.integers(1, cfg.vocab_size, shape).astype(np.int32),
           "puzzle_identifiers": rng.integers(0, cfg.num_puzzle_identifiers,
                                              (batch,)).astype(np.int32)}
          for _ in range(count)]


def peak_device_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def measure(cfg, opt: ml_collections.ConfigDict, batch: int, num_steps: int,
            grad_accum_steps: int = 1) -> dict:
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  program = steps.build_train_step(cfg, opt, total_steps=10_000, global_batch_size=batch,
                                   mesh=mesh, grad_accum_steps=grad_accum_steps)
  state, carry = program.init_state(jax.random.key(0)), program.init_carry()
  batches = random_batches(cfg, batch)
  t0 = time.perf_counter()
  state, carry, m = program.step(state, carry, batches[0], jax.random.key(1))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for i in range(3):  # warm-up
    state, carry, m = program.step(state, carry, batches[i % 4], jax.random.key(1))
  jax.block_until_ready(m)
  times, cpu_times = [], []
  for i in range(num_steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, carry, m = program.step(state, carry, batches[i % 4], jax.random.key(1))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  step_s = statistics.median(times)
  flops = models.family_of(cfg).train_step_flops(cfg, batch)
  result = {"dtype": cfg.forward_dtype, "batch": batch, "step_s": step_s,
            "examples_per_s": batch / step_s,
            "gflops_per_step": flops / 1e9, "achieved_gflop_s": flops / step_s / 1e9,
            "model_tflop_s": flops / step_s / 1e12,
            "compile_s": compile_s, "grad_accum_steps": grad_accum_steps,
            # CPU seconds per step over all threads: robust to other load on the box.
            "cpu_s_per_step": statistics.median(cpu_times)}
  if _PROFILE_DIR.value:
    trace_dir = os.path.join(_PROFILE_DIR.value, f"{cfg.forward_dtype}_b{batch}")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for i in range(3):
        state, carry, m = program.step(state, carry, batches[i % 4], jax.random.key(1))
      jax.block_until_ready(m)
    result["profile_top_ops"] = top_ops(trace_dir, _TOP_OPS.value, steps_traced=3)
    result["profile_dir"] = trace_dir
  return result


def top_ops(trace_dir: str, count: int, steps_traced: int) -> dict[str, list]:
  """The traced XLA ops (events with an `hlo_op`: CPU thunks, GPU kernels),
  summed by HLO op name and by op kind (the name without its ".N" suffix:
  all `dot`s, all `multiply_add_fusion`s, ...): [[name, ms per step, share of
  the traced op time]], the largest first."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not paths:
    return {"by_op": [], "by_kind": []}
  with gzip.open(max(paths, key=os.path.getmtime), "rt") as f:
    trace = json.load(f)
  events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
  by_op, by_kind = collections.Counter(), collections.Counter()
  for e in events:
    op = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") != "X" or "dur" not in e or not op:
      continue
    ms = float(e["dur"]) / 1e3  # microseconds
    by_op[op] += ms
    by_kind[re.sub(r"\.\d+$", "", op)] += ms
  total = sum(by_op.values()) or 1.0
  rows = lambda counter: [[name, round(ms / steps_traced, 3), round(ms / total, 4)]
                          for name, ms in counter.most_common(count)]
  return {"by_op": rows(by_op), "by_kind": rows(by_kind),
          "op_ms_per_step": round(total / steps_traced, 2)}


def runs_to_measure():
  """[(model config, optimizer config, batch, grad_accum_steps)] from the flags."""
  if _CONFIG.value is None:
    dtypes = {None: ["bfloat16", "float32"], "both": ["bfloat16", "float32"]}.get(
        _DTYPE.value, [_DTYPE.value])
    opt = ml_collections.ConfigDict(BENCH_OPT)
    return [(bench_config(d), opt, _BATCH.value or BENCH_BATCH, 1) for d in dtypes]
  config = _CONFIG.value
  base = models.make_config(config.model, data.shape(config.data))
  dtypes = {None: [base.forward_dtype], "both": ["bfloat16", "float32"]}.get(
      _DTYPE.value, [_DTYPE.value])
  return [(dataclasses.replace(base, forward_dtype=d), config.opt,
           _BATCH.value or config.batch_size, config.get("grad_accum_steps", 1))
          for d in dtypes]


def machine() -> dict:
  """The CPU kind and the device the step ran on (the JSON line's machine keys)."""
  kind = cpu_kind.detect()
  device = jax.devices()[0]
  return {"cpu_model": kind.model_name, "cpu_machine": kind.machine,
          "cpu_bf16_units": kind.has_bf16_units, "cpu_bf16_flags": list(kind.bf16_flags),
          "backend": jax.default_backend(), "device_kind": device.device_kind,
          "jax_version": jax.__version__}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  results = [measure(cfg, opt, batch, _STEPS.value, accum)
             for cfg, opt, batch, accum in runs_to_measure()]
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  peak_dev = peak_device_bytes()
  print(f"{'dtype':10s} {'batch':>6s} {'ex/s':>9s} {'step ms':>8s} {'GFLOP/step':>11s} "
        f"{'GFLOP/s':>9s} {'compile s':>9s} {'cpu s/step':>10s}")
  for r in results:
    print(f"{r['dtype']:10s} {r['batch']:6d} {r['examples_per_s']:9.1f} "
          f"{r['step_s'] * 1e3:8.1f} {r['gflops_per_step']:11.2f} "
          f"{r['achieved_gflop_s']:9.1f} {r['compile_s']:9.1f} {r['cpu_s_per_step']:10.3f}")
  print(f"peak host memory (RSS): {peak_rss_mb:.0f} MB; device: {jax.devices()[0]}"
        + (f"; peak device memory {peak_dev / 2**30:.2f} GiB" if peak_dev else ""))
  info = machine()
  print(f"CPU: {cpu_kind.detect().describe()}: "
        f"{'has' if info['cpu_bf16_units'] else 'no'} bfloat16 units (the CPU recipes "
        f"use {cpu_kind.recipe_dtype()}); backend {info['backend']} "
        f"({info['device_kind']}), JAX {info['jax_version']}.")
  for r in results:
    if "profile_top_ops" in r:
      ops = r["profile_top_ops"]
      print(f"[{r['dtype']}] traced XLA op time {ops.get('op_ms_per_step', 0):.1f} ms/step "
            f"(trace: {r['profile_dir']}); by kind, then by op:")
      for name, ms, share in ops["by_kind"] + [["--", 0, 0]] + ops["by_op"]:
        print(f"  {ms:9.2f} ms/step {share:6.1%}  {name[:100]}")
  summary = {f"{r['dtype']}_{k}": round(r[k], 4) for r in results
             for k in ("examples_per_s", "step_s", "achieved_gflop_s", "model_tflop_s",
                       "cpu_s_per_step")}
  summary.update({f"{r['dtype']}_profile_top_ops": r["profile_top_ops"]
                  for r in results if "profile_top_ops" in r})
  summary["batch"] = results[0]["batch"]
  summary["grad_accum_steps"] = results[0]["grad_accum_steps"]
  summary.update(info)
  summary["peak_rss_mb"] = round(peak_rss_mb, 1)
  if peak_dev:
    summary["peak_device_gib"] = round(peak_dev / 2**30, 3)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
