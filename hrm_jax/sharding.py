"""Device mesh and the shardings of state, carry and batches.

The mesh has two axes: `data` (pure data parallelism: parameters replicated)
and `fsdp` (data parallelism whose parameters and optimizer state are also
split across the axis). The batch is split over both. Under `fsdp` > 1 every
array of at least two dimensions is split along its largest axis divisible by
the fsdp size: the block weights, their AdamATan2 moments and, above all, the
puzzle-embedding table (ARC: ~1M x 512 float32, 2 GB), which must not be
replicated on every chip.

`config.mesh` is a list of (axis, size) pairs; one size may be -1 (the rest).
"""
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every device


def mesh_shape(mesh_config: Sequence[tuple[str, int]], num_devices: int) -> dict[str, int]:
  """Resolves the -1 entry and checks the product; raises ValueError with the fix."""
  sizes = {axis: 1 for axis in MESH_AXES}
  unknown = [name for name, _ in mesh_config if name not in MESH_AXES]
  if unknown:
    raise ValueError(f"config.mesh names unknown axes {unknown}; use {MESH_AXES}.")
  free = [name for name, size in mesh_config if size == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: only one axis may be -1, got {free}.")
  fixed = 1
  for name, size in mesh_config:
    if size != -1:
      if size < 1:
        raise ValueError(f"config.mesh: axis {name!r} has size {size}.")
      sizes[name] = size
      fixed *= size
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh={list(mesh_config)}: {num_devices} devices do not "
                       f"divide by the fixed axes' product {fixed}.")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"config.mesh={list(mesh_config)} covers {fixed} devices but "
                     f"{num_devices} are present; set one axis to -1.")
  return sizes


def parse_mesh(spec: str | Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
  """"data:-1,fsdp:2" (or already a list of pairs) -> [("data", -1), ("fsdp", 2)]."""
  if not isinstance(spec, str):
    return [(str(name), int(size)) for name, size in spec]
  pairs = []
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, sep, size = item.partition(":")
    try:
      pairs.append((name.strip(), int(size)))
    except ValueError:
      sep = ""
    if not sep:
      raise ValueError(f"Mesh spec {spec!r}: write axis:size pairs, e.g. 'data:-1,fsdp:2'.")
  return pairs


def make_mesh(mesh_config: str | Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh from "data:-1,fsdp:2" or [("data", -1), ("fsdp", 2)]."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = mesh_shape(parse_mesh(mesh_config), len(devices))
  grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
  return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over all devices; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], fsdp_size: int) -> P:
  """Largest axis divisible by the fsdp size goes over `fsdp`; else replicated."""
  if fsdp_size <= 1 or len(shape) < 2:
    return P()
  candidates = [(size, axis) for axis, size in enumerate(shape) if size % fsdp_size == 0]
  if not candidates:
    return P()
  _, axis = max(candidates)
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return P(*spec)


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """Shardings for a train-state pytree of ShapeDtypeStructs/arrays."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size)),
                      abstract_state)


def batch_shardings(mesh: Mesh, tree: Any) -> Any:
  """Every leaf split along its leading (batch) axis; scalars replicated."""
  return jax.tree.map(
      lambda x: batch_sharding(mesh) if len(x.shape) else replicated(mesh), tree)


def check_batch_divides(global_batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  processes = jax.process_count()
  if global_batch_size % devices or global_batch_size % processes:
    raise ValueError(
        f"Global batch size {global_batch_size} must divide by the {devices} devices "
        f"and {processes} processes; change config.batch_size or config.mesh.")


def global_batch(host_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local rows -> one global array per key, split along the batch."""
  shard = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(shard, np.asarray(v))
          for k, v in host_batch.items()}


def to_host(tree: Any) -> Any:
  """Numpy copies of (possibly multi-host) arrays; per-row arrays are gathered
  from every process, so each process sees the whole batch."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
