r"""Compiles the real train step for a target: no dataset, no accelerator needed.

Two modes:
  --target=NAME   XLA's own GPU or TPU compiler, run on this CPU for compile-only
                  devices (`launch/targets.py`: h100, h200, a100-80gb, l40s, t4,
                  tpu:v5e:4x4, tpu:v4-8, ...): the accelerator's memory figures,
                  its fusions and kernels (cuDNN flash attention on GPUs).
                  Needs the optional extra (`pip install -e ".[aot-gpu]"` /
                  `".[aot-tpu]"`); without it this fails in one line naming it.
  (no --target)   fake CPU devices: SPMD partitioning on any mesh, state bytes
                  per device; memory figures are XLA:CPU's, not a GPU's or TPU's.

  python launch/compile_check.py --config=experiments/maze.py:1gpu --target=h100
  python launch/compile_check.py --config=experiments/arc.py --target=tpu:v5e:4x4
  python launch/compile_check.py --config=experiments/maze.py --target=t4 --search

How: the device count becomes `jax_num_cpu_devices` (or the target's devices)
before JAX starts (so the script runs as its own process); the model is built
from the experiment config plus the dataset's shape (`hrm_jax.data.shape`, no
data built; overridable by flags) and the train step is the trainer's own
(`steps.build_train_step`): its abstract arguments are lowered and compiled,
which runs XLA's SPMD partitioner exactly as on the real machines.

Prints per-device bytes of parameters, optimizer state and puzzle embedding
(from the shardings: leaf bytes / shards), XLA's memory analysis of the CPU
compile, FLOPs per step and a step-time estimate, and as the last line one JSON
object. CPU numbers are the CPU compiler's: on TPU/GPU temp sizes differ in
detail (other fusions, bf16 kernels, cuDNN attention keeps no L x L scores),
argument and output sizes do not. XLA:CPU's default scheduler orders for
concurrency and so keeps rematerialised activations alive as if they were
saved; this script turns it off (`--xla_cpu_enable_concurrency_optimized_
scheduler=false`, unless XLA_FLAGS already sets it) so that the temporaries
follow a memory-minimising order, as accelerator schedulers do.

Fitting one device (gradient accumulation, rematerialisation; with --target the
memory is the target's and the fraction its own: 0.75 on GPUs, 1.0 on TPUs):

  python launch/compile_check.py --config=experiments/maze.py --mesh=data:1 \
      --device_memory=80GiB
  python launch/compile_check.py --config=experiments/maze.py:1gpu --mesh=data:1

`config.grad_accum_steps` and `config.model.remat` are compiled as set (both
overridable: --config.grad_accum_steps=4 --config.model.remat=dots). With k > 1
the smaller powers of two k' < k are compiled too (--compare_k, default on), so
the temporaries per k show what accumulation saves. `--device_memory` tries
k = 1, 2, 4, ... (divisors of the per-device batch) for each remat setting of
--remat_options, stopping at the first k that fits, says which settings fit
and picks the smallest k that fits (a tie goes to the setting listed first:
the least recompute); with --target, --search does the same for the target's
memory. A setting fits when arguments + outputs - aliased +
temporaries <= device_memory * --usable_fraction (0.75: JAX preallocates 75%
of a GPU by default, XLA_PYTHON_CLIENT_MEM_FRACTION; the CPU compiler's
temporaries are an estimate, so keep a margin and measure the peak on the
device: benchmarks/gpu_session.sh). The JSON line carries `temp_bytes_by_k`
(for the config's remat), `sweep` (every compile) and `pick`.
"""
# pylint: disable=invalid-name
import dataclasses
import json
import math
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a file: make `launch` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Before XLA starts (read when the CPU client is created): a memory-minimising
# schedule, so rematerialisation shows in the temporaries (module docstring).
_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_SCHEDULER_FLAG}=false"
                             ).strip()

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from hrm_jax import data, models, sharding, steps  # pylint: disable=wrong-import-position
from hrm_jax.models import layers  # pylint: disable=wrong-import-position

from launch import targets, xla_memory  # pylint: disable=wrong-import-position
from launch.xla_memory import (accum_candidates, cost_flops, device_bytes,  # pylint: disable=wrong-import-position
                               peak_estimate, total_bytes)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file, e.g. experiments/arc.py or experiments/arc.py:arc2.",
    lock_config=True)
_MESH = flags.DEFINE_string(
    "mesh", None, "Mesh to compile for, e.g. data:8 or data:32,fsdp:8 (replaces "
    "config.mesh). Its product is the number of devices (fake CPU ones, or GPUs of "
    "--target); required without --target (default there: one GPU, the whole TPU slice).")
_TARGET = flags.DEFINE_string(
    "target", None, "Compile with this accelerator's own XLA compiler (compile-only "
    "devices, no hardware): h100, h200, a100-80gb, l40s, t4 or tpu:<gen>:<chips> "
    "(tpu:v5e:4x4, tpu:v4-8, tpu:v5p:2x2x1, tpu:v6e:2x2). Needs the aot-gpu/aot-tpu extra.")
_SEARCH = flags.DEFINE_bool(
    "search", False, "With --target: search the smallest k / remat that fits the "
    "target's memory (as --device_memory does).")
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
    "peak_tflops", "h100", "Peak dense TFLOP/s per device (--target: its own unless given): a number or one of "
    "h100 (bf16, 990), h200 (990), a100 (312), v4 (275), v5e (197), v5p (459).")
_MFU = flags.DEFINE_float("mfu", 0.3, "Assumed model-FLOP utilisation for the estimate.")
_COMPILE = flags.DEFINE_bool(
    "compile", True, "False: shardings and bytes only (seconds instead of a minute).")
_DEVICE_MEMORY = flags.DEFINE_string(
    "device_memory", None, "Memory of one device, e.g. 80GiB, 141GB or bytes: try "
    "grad_accum_steps k = 1, 2, 4, ... and the --remat_options, say which fit and pick "
    "the smallest k that fits.")
_USABLE = flags.DEFINE_float(
    "usable_fraction", 0.75, "Part of --device_memory the step may use (JAX's default "
    "GPU preallocation is 0.75).")
_REMAT_OPTIONS = flags.DEFINE_list(
    "remat_options", ["none", "dots", "blocks"],
    "config.model.remat settings --device_memory tries, least recompute first.")
_MIN_K = flags.DEFINE_integer("min_k", 1, "The search tries k >= this only (saves "
                              "compiles where small k cannot fit).")
_COMPARE_K = flags.DEFINE_bool(
    "compare_k", True, "With config.grad_accum_steps = k > 1, also compile the powers "
    "of two below k (temporaries per k).")

PEAK_TFLOPS = {"h100": 990.0, "h200": 990.0, "a100": 312.0, "v4": 275.0,
               "v5e": 197.0, "v5p": 459.0}
MiB = 1024 * 1024
GiB = 1024 * MiB


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


def parse_bytes(text: str) -> int:
  try:
    return xla_memory.parse_bytes(text)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


# Set by main(): the --target (None: fake CPU devices).
_COMPILE_TARGET: targets.Target | None = None


def compile_step(model_cfg, config, mesh, total_steps: int, grad_accum_steps: int) -> dict:
  """Lowers and compiles the train step; XLA's memory analysis and timings."""
  program = steps.build_train_step(model_cfg, config.opt, total_steps, config.batch_size,
                                   mesh, ema_rate=config.get("ema_rate", 0.0),
                                   grad_accum_steps=grad_accum_steps)
  target = _COMPILE_TARGET
  start = time.perf_counter()
  # Attention resolves for the target (cuDNN on GPUs), not for this CPU.
  with layers.attention_platform(target.attention_platform if target else None):
    lowered = program.step.lower(*program.abstract_args())
  lower_s = time.perf_counter() - start
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:  # XLA:TPU refuses what cannot fit its HBM
    if (xla := xla_memory.compile_oom_stats(e)) is None:
      raise
    print(f"Compile refused: {str(e).splitlines()[0][:300]}")
    return {"lower_seconds": round(lower_s, 2), "compile_seconds": None, "xla": xla,
            "xla_flops": None, "compile_error": str(e).splitlines()[0][:300]}
  compile_s = time.perf_counter() - start - lower_s
  out = {"lower_seconds": round(lower_s, 2), "compile_seconds": round(compile_s, 2),
         "xla": xla_memory.memory_stats(compiled), "xla_flops": cost_flops(compiled)}
  if target is not None and target.gpu:
    out["cudnn_fmha_calls"] = compiled.as_text().count("__cudnn$fmha")
  return out


def accumulation_report(model_cfg, config, mesh, total_steps: int, accum: int,
                        own: dict, num_devices: int, memory: int | None,
                        usable: float, search: bool) -> dict:
  """Temporaries per k (--compare_k) and the fit search (`search`: the smallest
  k / remat whose peak is at most `memory` x `usable`)."""
  per_device = config.batch_size // num_devices
  remat = getattr(model_cfg, "remat", None)
  compiled = {(accum, remat): own}

  def compiled_for(k: int, remat_setting: str) -> dict:
    if (k, remat_setting) not in compiled:
      if remat is None:
        raise app.UsageError(f"The {model_cfg.ARCH!r} family has no remat setting: "
                             "pass --remat_options= (empty) to vary only k.")
      cfg = dataclasses.replace(model_cfg, remat=remat_setting) if remat_setting else model_cfg
      compiled[(k, remat_setting)] = compile_step(cfg, config, mesh, total_steps, k)
    return compiled[(k, remat_setting)]

  report = {}
  if _COMPARE_K.value and accum > 1:
    for k in [k for k in accum_candidates(per_device) if k < accum]:
      compiled_for(k, remat)
  budget = int(memory * usable) if memory else None
  if search and budget:
    unknown = sorted(set(_REMAT_OPTIONS.value) - set(layers.REMAT_POLICIES) - {remat})
    if unknown:
      raise app.UsageError(f"--remat_options: {unknown} unknown; use "
                           f"{sorted(layers.REMAT_POLICIES)}.")
    for remat_setting in _REMAT_OPTIONS.value or [remat]:
      for k in [k for k in accum_candidates(per_device) if k >= _MIN_K.value]:
        if peak_estimate(compiled_for(k, remat_setting)["xla"]) <= budget:
          break  # larger k only need less
  sweep = [{"grad_accum_steps": k, "remat": r,
            "temp_bytes": c["xla"].get("temp_bytes"),
            "peak_estimate_bytes": peak_estimate(c["xla"]),
            "compile_seconds": c["compile_seconds"],
            **({"fits": peak_estimate(c["xla"]) <= budget} if budget else {})}
           for (k, r), c in sorted(compiled.items(), key=lambda item: (
               _remat_rank(item[0][1]), item[0][0]))]
  by_k = {str(e["grad_accum_steps"]): e["temp_bytes"] for e in sweep if e["remat"] == remat}
  report["temp_bytes_by_k"] = by_k
  report["sweep"] = sweep
  if len(sweep) > 1:
    print(f"Temporaries and peak estimate per setting ({_compiler_name()}, per device):")
    for e in sweep:
      fits = "" if budget is None else ("  fits" if e["fits"] else "  does not fit")
      print(f"  grad_accum_steps={e['grad_accum_steps']:<4d} remat={e['remat']:<7s} "
            f"temp {e['temp_bytes'] / GiB:9.2f} GiB  peak ~{e['peak_estimate_bytes'] / GiB:9.2f}"
            f" GiB{fits}")
  if budget is not None:
    fitting = [e for e in sweep if e["fits"]]
    if not search:
      return report
    if fitting:
      best = min(fitting, key=lambda e: (e["grad_accum_steps"], _remat_rank(e["remat"])))
      report["pick"] = {"grad_accum_steps": best["grad_accum_steps"], "remat": best["remat"]}
      print(f"Fits {memory / GiB:.1f} GiB x {usable:g} = {budget / GiB:.1f} GiB: "
            + ", ".join(f"k={e['grad_accum_steps']} remat={e['remat']}" for e in fitting)
            + f". Smallest k: --config.grad_accum_steps={best['grad_accum_steps']} "
            f"--config.model.remat={best['remat']} ({_compiler_name()}'s figure: measure "
            "the peak on the device).")
    else:
      report["pick"] = None
      print(f"Nothing tried fits {budget / GiB:.1f} GiB, even "
            f"k={accum_candidates(per_device)[-1]}: use more devices (--mesh), other "
            "--remat_options or a smaller model.")
  return report


def _remat_rank(remat: str | None) -> int:
  order = list(_REMAT_OPTIONS.value) + sorted(layers.REMAT_POLICIES)
  return order.index(remat) if remat in order else len(order)


def _compiler_name() -> str:
  target = _COMPILE_TARGET
  if target is None:
    return "XLA:CPU"
  return f"XLA:GPU for {target.name}" if target.gpu else f"XLA:TPU for {target.name}"


def _start_backend() -> tuple[targets.Target | None, list, str]:
  """(target, devices, mesh spec) before anything else touches a backend: the
  target's compile-only devices, or fake CPU devices, however many."""
  global _COMPILE_TARGET  # pylint: disable=global-statement
  if _TARGET.value is None:
    if _MESH.value is None:
      raise app.UsageError("Pass --mesh (fake CPU devices) or --target.")
    num_devices = mesh_device_count(_MESH.value, _NUM_DEVICES.value)
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", num_devices)
    if jax.device_count() != num_devices:
      raise RuntimeError(f"Wanted {num_devices} CPU devices, JAX has "
                         f"{jax.device_count()}: was the backend started before this "
                         "script set it up?")
    return None, jax.devices(), _MESH.value
  try:
    target = targets.parse(_TARGET.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    targets.check_installed(target)
  except targets.TargetUnavailable as e:
    sys.exit(f"compile_check: {e}")  # one line, exit status 1
  targets.prepare_environment(target)
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", 1)
  _COMPILE_TARGET = target
  if target.gpu:
    spec = _MESH.value or "data:1"
    return target, targets.devices(target, mesh_device_count(spec, _NUM_DEVICES.value)), spec
  devices = targets.devices(target)  # the slice's; a --mesh must cover them all
  return target, devices, _MESH.value or f"data:{len(devices)}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  target, devices, mesh_spec = _start_backend()
  num_devices = len(devices)

  config = _CONFIG.value
  with config.unlocked():
    config.mesh = mesh_spec
  shape = dataset_shape(config)
  model_cfg = models.make_config(config.model, shape)
  if target and target.gpu and not target.gpu.flash_attention and \
      getattr(model_cfg, "attention_impl", None) == "auto":
    # cuDNN's flash attention needs sm80+: dense attention on this GPU.
    model_cfg = dataclasses.replace(model_cfg, attention_impl="xla")
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch_divides(config.batch_size, mesh)
  total_steps = config.total_steps if config.total_steps > 0 else _TOTAL_STEPS.value
  accum = config.get("grad_accum_steps", 1)
  program = steps.build_train_step(model_cfg, config.opt, total_steps, config.batch_size,
                                   mesh, ema_rate=config.get("ema_rate", 0.0),
                                   grad_accum_steps=accum)
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
      "target": target.name if target else "cpu", "compiler": _compiler_name(),
      "device_kind": devices[0].device_kind,
      "mesh": dict(mesh.shape), "devices": num_devices, "family": config.data.family,
      "arch": model_cfg.ARCH,
      "vocab_size": shape.vocab_size, "seq_len": shape.seq_len,
      "num_puzzle_identifiers": shape.num_puzzle_identifiers,
      "batch_size": config.batch_size, "batch_per_device": config.batch_size // num_devices,
      "grad_accum_steps": accum, "remat": getattr(model_cfg, "remat", None),
      "forward_dtype": model_cfg.forward_dtype,
      "num_params": models.count_params(state.params),
      "puzzle_emb_shape": list(state.puzzle_emb.shape),
      "puzzle_emb_spec": [a for a in emb_spec] + [None] * (2 - len(emb_spec)),
      "puzzle_emb_total_bytes": emb_total,
      "puzzle_emb_shards": emb_total // max(mem["puzzle_emb"], 1),
      **{f"per_device_{k}_bytes": v for k, v in mem.items()},
  }
  where = (f"compile-only {devices[0].device_kind} devices ({_compiler_name()})" if target
           else "fake CPU devices")
  print(f"Mesh {dict(mesh.shape)} on {num_devices} {where}; "
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
  peak = (target.bf16_tflops() if target and not _PEAK.present
          else peak_tflops(_PEAK.value)) * 1e12
  step_s = flops / num_devices / (peak * _MFU.value)
  result.update({"model_flops_per_step": flops,
                 "model_flops_per_device": flops / num_devices,
                 "peak_tflops": peak / 1e12, "mfu": _MFU.value,
                 "est_step_seconds": step_s})
  print(f"Model FLOPs per step: {flops:.3e} ({flops / num_devices:.3e} per device); at "
        f"{peak / 1e12:g} TFLOP/s and MFU {_MFU.value:g}: ~{step_s * 1e3:.1f} ms/step.")

  if _COMPILE.value:
    own = compile_step(model_cfg, config, mesh, total_steps, accum)
    xla, xla_flops = own["xla"], own["xla_flops"]
    result.update({"lower_seconds": own["lower_seconds"], "compile_error": own.get(
                   "compile_error"), "compile_seconds": own["compile_seconds"],
                   "xla_flops_per_device": xla_flops,
                   "peak_estimate_bytes": peak_estimate(xla),
                   **{f"xla_{k}": v for k, v in xla.items()}})
    print(f"Lowered in {own['lower_seconds']:.1f} s, compiled in {own['compile_seconds']} s "
          f"(grad_accum_steps={accum}, remat={getattr(model_cfg, 'remat', None)!r}).")
    print(f"XLA memory analysis (per device, {_compiler_name()}):")
    for key, value in xla.items():
      print(f"  {key:<21s} {value / MiB:10.2f} MiB")
    if target is None:
      print("  (XLA:CPU's buffers and fusions, not an accelerator's: --target=h100 or "
            "--target=tpu:v5e:4x4 compiles with theirs.)")
    if xla_flops is not None:
      print(f"XLA cost_analysis FLOPs per device: {xla_flops:.3e} (while-loop bodies "
            "counted once: a lower bound, not used for the estimate).")
    memory = (parse_bytes(_DEVICE_MEMORY.value) if _DEVICE_MEMORY.value
              else target.memory_per_device(devices) if target else None)
    usable = _USABLE.value if (_USABLE.present or not target) else target.usable_fraction
    peak_bytes = peak_estimate(xla)
    fits = None if memory is None else peak_bytes <= memory * usable
    result.update({"peak_bytes": peak_bytes, "fits": fits, "device_memory_bytes": memory,
                   "usable_fraction": usable,
                   "budget_bytes": int(memory * usable) if memory else None,
                   "attention": "none (mlp_t)" if getattr(model_cfg, "mlp_t", False)
                                else layers.resolve_attention_impl(
                                    model_cfg.attention_impl, model_cfg.forward_dtype,
                                    target.attention_platform if target else None),
                   "cudnn_fmha_calls": own.get("cudnn_fmha_calls")})
    if memory is not None:
      print(f"Peak per device {peak_bytes / GiB:.2f} GiB (arguments + outputs - aliased + "
            f"temporaries) of {memory / GiB:.1f} GiB x {usable:g}: "
            f"{'fits' if fits else 'does NOT fit'} ({_compiler_name()}).")
    result.update(accumulation_report(
        model_cfg, config, mesh, total_steps, accum, own, num_devices, memory, usable,
        search=bool(_DEVICE_MEMORY.value) or _SEARCH.value))
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
