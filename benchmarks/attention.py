"""Dense XLA attention vs cuDNN flash attention (GPU only): error and speed.

  python benchmarks/attention.py [--batch=96] [--seq=901] [--heads=8] [--head_dim=64]

Runs `layers.dense_attention` and `layers.cudnn_attention` (cuDNN flash
attention, L padded to a multiple of 64) on the same bf16 inputs (the paper's Maze/ARC attention shape by
default), reports the relative error of the outputs and of the input gradients,
and the median time of forward+backward for each. On a machine without a GPU it
says so and measures the dense path alone. Last line: one JSON object.
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from hrm_jax.models import layers


def rel_err(a, b) -> float:
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def timed(fn, *args, repeats=10) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=96)
  parser.add_argument("--seq", type=int, default=901)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  args = parser.parse_args()
  shape = (args.batch, args.seq, args.heads, args.head_dim)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, cot = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)

  def loss_grad(attend):
    def loss(q, k, v):
      return jnp.sum(attend(q, k, v).astype(jnp.float32) * cot.astype(jnp.float32))
    return jax.jit(lambda q, k, v: (attend(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)))

  impls = {"xla": layers.dense_attention}
  if jax.default_backend() == "gpu":
    impls["cudnn"] = layers.cudnn_attention
  else:
    print(f"backend {jax.default_backend()}: no cuDNN, dense attention only")
  results, outputs = {}, {}
  for name, attend in impls.items():
    fn = loss_grad(attend)
    outputs[name] = fn(q, k, v)
    results[f"{name}_fwd_bwd_ms"] = round(timed(fn, q, k, v) * 1e3, 3)
  if "cudnn" in outputs:
    (out_x, grads_x), (out_c, grads_c) = outputs["xla"], outputs["cudnn"]
    results["out_rel_err"] = rel_err(out_c, out_x)
    results["grad_rel_err"] = max(rel_err(gc, gx) for gc, gx in zip(grads_c, grads_x))
  print(f"shape B,L,H,K = {shape}, bf16; device {jax.devices()[0]}")
  for key, value in results.items():
    print(f"  {key:18s} {value:.4g}")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
