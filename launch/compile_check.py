r"""Compiles the real train step for a big mesh on fake CPU devices: no dataset, no TPU.

Answers "will this config fit and how fast could it go on N chips?" before any
accelerator time is spent:

  python launch/compile_check.py --config=experiments/arc.py --mesh=data:8
  python launch/compile_check.py --config=experiments/arc.py --mesh=data:32,fsdp:8 \
      --peak_tflops=v5e --mfu=0.4
  python launch/compile_check.py --config=experiments/sudoku.py --mesh=data:8 \
      --config.batch_size=384

How: the mesh's device count becomes `jax_num_cpu_devices` before JAX starts
(so the script must run as its own process), the model is built from the
experiment config plus the dataset's shape (`hrm_jax.data.shape`: computed from
the data config without building anything; overridable by flags), and the
train step is the trainer's own (`steps.build_train_step`): its abstract
arguments (nothing is allocated) are lowered and compiled, which runs XLA's
SPMD partitioner exactly as on the real machines.

Prints per-device bytes of parameters, optimizer state and puzzle embedding
(from the shardings: leaf bytes / shards), XLA's memory analysis of the CPU
compile, FLOPs per step and a step-time estimate, and as the last line one JSON
object. CPU numbers are the CPU compiler's: on TPU/GPU temp sizes differ in
detail (other fusions, bf16 kernels), argument and output sizes do not.
"""
# pylint: disable=invalid-name
import json
import math
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a file: make `launch` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from hrm_jax import data, models, sharding, steps  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file, e.g. experiments/arc.py or experiments/arc.py:arc2.",
    lock_config=True)
_MESH = flags.DEFINE_string(
    "mesh", None, "Mesh to compile for, e.g. data:8 or data:32,fsdp:8 (replaces "
    "config.mesh). Its product is the number of fake devices.", required=True)
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", None, "Device count when --mesh has a -1 axis.")
_VOCAB = flags.DEFINE_integer("vocab_size", None, "Override the dataset's vocabulary.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Override the dataset's sequence length.")
_IDS = flags.DEFINE_integer("num_puzzle_identifiers", None,
                            "Override the dataset's puzzle-identifier count.")
_TOTAL_STEPS = flags.DEFINE_integer(
    "total_steps", 100_000, "LR-schedule length when config.total_steps <= 0 "
    "(only constants in the step change).")
_PEAK = flags.DEFINE_string(
    "peak_tflops", "h100", "Peak dense TFLOP/s per device: a number or one of "
    "h100 (bf16, 990), h200 (990), a100 (312), v4 (275), v5e (197), v5p (459).")
_MFU = flags.DEFINE_float("mfu", 0.3, "Assumed model-FLOP utilisation for the estimate.")
_COMPILE = flags.DEFINE_bool(
    "compile", True, "False: shardings and bytes only (seconds instead of a minute).")

PEAK_TFLOPS = {"h100": 990.0, "h200": 990.0, "a100": 312.0, "v4": 275.0,
               "v5e": 197.0, "v5p": 459.0}
MiB = 1024 * 1024


def mesh_device_count(spec: str, num_devices: int | None) -> int:
  """Product of the mesh sizes; a -1 axis needs --num_devices."""
  pairs = sharding.parse_mesh(spec)
  if any(size == -1 for _, size in pairs):
    if not num_devices:
      raise app.UsageError(f"--mesh={spec} has a -1 axis: also pass --num_devices.")
    return num_devices
  return math.prod(size for _, size in pairs)


def peak_tflops(value: str) -> float:
  if value.lower() in PEAK_TFLOPS:
    return PEAK_TFLOPS[value.lower()]
  try:
    return float(value)
  except ValueError:
    raise app.UsageError(f"--peak_tflops={value!r}: a number or one of "
                         f"{sorted(PEAK_TFLOPS)}.") from None


def dataset_shape(config) -> data.DatasetShape:
  """The dataset's shape from its config, with the flags' overrides."""
  overrides = {"vocab_size": _VOCAB.value, "seq_len": _SEQ_LEN.value,
               "num_puzzle_identifiers": _IDS.value}
  if all(v is not None for v in overrides.values()):
    return data.DatasetShape(**overrides)
  try:
    base = data.shape(config.data)
  except data.DataError as e:
    raise app.UsageError(f"The dataset's shape cannot be read from config.data ({e}); "
                         "pass --vocab_size, --seq_len and --num_puzzle_identifiers."
                         ) from None
  return data.DatasetShape(**{k: v if v is not None else getattr(base, k)
                              for k, v in overrides.items()})


def device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree`: each leaf's shard shape times itemsize."""
  leaves = jax.tree.leaves(tree)
  shards = jax.tree.leaves(shardings)
  return sum(math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x, s in zip(leaves, shards))


def total_bytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  num_devices = mesh_device_count(_MESH.value, _NUM_DEVICES.value)
  # Before anything touches a backend: fake CPU devices, however many.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", num_devices)
  if jax.device_count() != num_devices:
    raise RuntimeError(f"Wanted {num_devices} CPU devices, JAX has {jax.device_count()}: "
                       "was the backend started before this script set it up?")

  config = _CONFIG.value
  with config.unlocked():
    config.mesh = _MESH.value
  shape = dataset_shape(config)
  model_cfg = models.make_config(config.model, shape)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divides(config.batch_size, mesh)
  total_steps = config.total_steps if config.total_steps > 0 else _TOTAL_STEPS.value
  program = steps.build_train_step(model_cfg, config.opt, total_steps, config.batch_size,
                                   mesh, ema_rate=config.get("ema_rate", 0.0))
  args = program.abstract_args()
  state = args[0]
  state_sh, carry_sh, batch_sh = (program.state_shardings, program.carry_shardings,
                                  program.batch_shardings)

  emb_spec = state_sh.puzzle_emb.spec
  mem = {
      "params": device_bytes(state.params, state_sh.params),
      "opt_state": device_bytes(state.opt_state, state_sh.opt_state),
      "puzzle_emb": device_bytes(state.puzzle_emb, state_sh.puzzle_emb),
      "carry": device_bytes(args[1], carry_sh),
      "batch": device_bytes(args[2], batch_sh),
  }
  emb_total = total_bytes(state.puzzle_emb)
  result = {
      "config": config_flags.get_config_filename(flags.FLAGS["config"]),
      "mesh": dict(mesh.shape), "devices": num_devices, "family": config.data.family,
      "arch": model_cfg.ARCH,
      "vocab_size": shape.vocab_size, "seq_len": shape.seq_len,
      "num_puzzle_identifiers": shape.num_puzzle_identifiers,
      "batch_size": config.batch_size, "batch_per_device": config.batch_size // num_devices,
      "num_params": models.count_params(state.params),
      "puzzle_emb_shape": list(state.puzzle_emb.shape),
      "puzzle_emb_spec": [a for a in emb_spec] + [None] * (2 - len(emb_spec)),
      "puzzle_emb_total_bytes": emb_total,
      "puzzle_emb_shards": emb_total // max(mem["puzzle_emb"], 1),
      **{f"per_device_{k}_bytes": v for k, v in mem.items()},
  }
  print(f"Mesh {dict(mesh.shape)} on {num_devices} fake CPU devices; "
        f"{config.data.family} data: vocab {shape.vocab_size}, seq_len {shape.seq_len}, "
        f"{shape.num_puzzle_identifiers:,} puzzle ids; global batch {config.batch_size} "
        f"({config.batch_size // num_devices} per device).")
  print(f"Parameters: {result['num_params']:,}; puzzle embedding "
        f"{tuple(state.puzzle_emb.shape)} sharded {emb_spec} "
        f"({emb_total / MiB:.1f} MiB in all, {result['puzzle_emb_shards']} shards).")
  print("Per-device state (from the shardings):")
  for key, value in mem.items():
    print(f"  {key:<11s} {value / MiB:10.2f} MiB")

  flops = models.family_of(model_cfg).train_step_flops(model_cfg, config.batch_size)
  peak = peak_tflops(_PEAK.value) * 1e12
  step_s = flops / num_devices / (peak * _MFU.value)
  result.update({"model_flops_per_step": flops,
                 "model_flops_per_device": flops / num_devices,
                 "peak_tflops": peak / 1e12, "mfu": _MFU.value,
                 "est_step_seconds": step_s})
  print(f"Model FLOPs per step: {flops:.3e} ({flops / num_devices:.3e} per device); at "
        f"{peak / 1e12:g} TFLOP/s and MFU {_MFU.value:g}: ~{step_s * 1e3:.1f} ms/step.")

  if _COMPILE.value:
    start = time.perf_counter()
    lowered = program.step.lower(*args)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    stats = compiled.memory_analysis()
    xla = {}
    if stats is not None:
      xla = {"argument_bytes": stats.argument_size_in_bytes,
             "output_bytes": stats.output_size_in_bytes,
             "alias_bytes": stats.alias_size_in_bytes,
             "temp_bytes": stats.temp_size_in_bytes,
             "generated_code_bytes": stats.generated_code_size_in_bytes}
    xla_flops = cost_flops(compiled)
    result.update({"lower_seconds": round(lower_s, 2),
                   "compile_seconds": round(compile_s, 2),
                   "xla_flops_per_device": xla_flops,
                   **{f"xla_{k}": v for k, v in xla.items()}})
    print(f"Lowered in {lower_s:.1f} s, compiled in {compile_s:.1f} s.")
    print("XLA memory analysis (per device, CPU compiler):")
    for key, value in xla.items():
      print(f"  {key:<21s} {value / MiB:10.2f} MiB")
    if xla_flops is not None:
      print(f"XLA cost_analysis FLOPs per device: {xla_flops:.3e} (while-loop bodies "
            "counted once: a lower bound, not used for the estimate).")
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
