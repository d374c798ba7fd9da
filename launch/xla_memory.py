"""XLA's figures of a compiled step: memory per device, FLOPs, byte sizes.

Used by `compile_check.py` for any compiler: XLA:CPU, or the GPU/TPU compilers
of `launch/targets.py`.
"""
import math
import re

import jax
import jax.numpy as jnp

from hrm_jax import memory_fit

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
  """'80GiB' / '141GB' / '512MiB' / '1e9' -> bytes; ValueError naming the forms."""
  match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text or "")
  if not match or match.group(2).lower() not in _UNITS:
    raise ValueError(f"--device_memory={text!r}: write a size such as 80GiB, 141GB, "
                     "512MiB or a number of bytes.")
  return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree`: each leaf's shard shape times itemsize."""
  leaves = jax.tree.leaves(tree)
  shards = jax.tree.leaves(shardings)
  return sum(math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x, s in zip(leaves, shards))


def total_bytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def memory_stats(compiled) -> dict:
  """`compiled.memory_analysis()` as a dict of per-device bytes ({} if none)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  return {"argument_bytes": stats.argument_size_in_bytes,
          "output_bytes": stats.output_size_in_bytes,
          "alias_bytes": stats.alias_size_in_bytes,
          "temp_bytes": stats.temp_size_in_bytes,
          "generated_code_bytes": stats.generated_code_size_in_bytes}


def peak_estimate(xla: dict) -> int | None:
  """Per-device bytes the step needs: live arguments, outputs not aliased to
  them (donation), temporaries."""
  if not xla:
    return None
  return memory_fit.peak_of(xla["argument_bytes"], xla["output_bytes"], xla["alias_bytes"],
                            xla["temp_bytes"])


def cost_flops(compiled) -> float | None:
  """FLOPs XLA reports; cost_analysis() is a dict or a list of dicts by version."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-exception-caught
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def accum_candidates(per_device_batch: int) -> list[int]:
  """k = 1, 2, 4, ... that divide the per-device batch (grad_accum_steps must)."""
  ks, k = [], 1
  while k <= per_device_batch:
    if per_device_batch % k == 0:
      ks.append(k)
    k *= 2
  return ks


def compile_oom_stats(error: Exception) -> dict | None:
  """The memory figures of a compile the TPU compiler refused ("RESOURCE_EXHAUSTED:
  Ran out of memory on HBM, the total memory required for HLO temporaries (27.37G)
  exceeds available HBM (15.75G)"): the temporaries it needed as `temp_bytes` (the
  peak is at least that), or None for any other error."""
  match = re.search(r"RESOURCE_EXHAUSTED.*?\(([0-9.]+)([KMGT])\) exceeds", str(error))
  if not match:
    return None
  scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2)]
  return {"argument_bytes": 0, "output_bytes": 0, "alias_bytes": 0,
          "temp_bytes": int(float(match.group(1)) * scale), "generated_code_bytes": 0}
