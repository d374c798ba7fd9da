"""Accelerators to compile for on a CPU-only machine (`compile_check --target=NAME`).

JAX can run XLA's GPU and TPU compilers without the hardware: a *compile-only*
topology (`jax.experimental.topologies.get_topology_desc`) gives devices that
can be lowered and compiled for but not run on. This module owns what that
needs: the table of targets (each GPU's device description and memory, each
TPU generation's HBM per chip), the optional packages that carry the
compilers (the `aot-gpu` / `aot-tpu` extras of setup.cfg), the environment
they need, and the devices of a target.

  GPUs:  h100, h200, a100-80gb, l40s, t4   (N GPUs: --mesh with N devices)
  TPUs:  tpu:<generation>:<chips> as libtpu names them, e.g. tpu:v5e:4x4,
         tpu:v5e:16x16, tpu:v4:2x2x1 (= tpu:v4-8), tpu:v5p:2x2x1, tpu:v6e:2x2

The GPU description is the `GpuTargetConfigProto` text XLA's GPU compiler
reads instead of querying a device: the numbers below are the vendors'
published figures for each part (SM count, clocks, caches, shared memory),
the CUDA runtime and cuDNN versions are those of the installed wheels.
Memory is what CUDA reports as the device's total (nvidia-smi's MiB figure);
a config *fits* when its peak (arguments + outputs - aliased + temporaries,
per device) is at most memory x usable fraction: 0.75 on GPUs (JAX
preallocates 75% of the memory by default, XLA_PYTHON_CLIENT_MEM_FRACTION),
1.0 of the HBM on TPUs (no preallocated pool; XLA keeps a little for itself).
"""
import dataclasses
import importlib.metadata
import importlib.util
import os
import re

GiB = 1024 ** 3
MiB = 1024 ** 2

# Versions the extras pin (setup.cfg): the compiler plugin must match jaxlib.
GPU_EXTRA = 'pip install -e ".[aot-gpu]"'
TPU_EXTRA = 'pip install -e ".[aot-tpu]"'
# Without autotuning (no device to time kernels on) XLA's Triton GEMM emitter
# cannot pick tile sizes ("Couldn't find output tile sizes"); cuBLAS GEMMs compile.
GPU_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)


@dataclasses.dataclass(frozen=True)
class Gpu:
  """One GPU model: what XLA's GPU compiler needs to know about it."""
  description: str  # the device_kind CUDA reports
  compute_capability: tuple[int, int]
  sm_count: int
  clock_ghz: float  # boost clock
  l2_bytes: int
  bandwidth_bytes_s: float  # HBM/GDDR bandwidth
  shared_per_sm: int  # shared memory per SM, bytes
  shared_per_block_optin: int  # the largest dynamic shared memory a block may opt in to
  threads_per_sm: int
  fp32_per_sm: int  # FP32 lanes per SM
  memory_mib: int  # total device memory (nvidia-smi)
  bf16_tflops: float  # dense bf16 tensor-core peak (no sparsity)

  @property
  def flash_attention(self) -> bool:
    """cuDNN's fused flash attention needs Ampere (sm80) or later."""
    return self.compute_capability >= (8, 0)


GPUS = {
    "h100": Gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 50 * MiB, 3.35e12,
                228 * 1024, 227 * 1024, 2048, 128, 81559, 989.0),
    "h200": Gpu("NVIDIA H200", (9, 0), 132, 1.98, 50 * MiB, 4.8e12,
                228 * 1024, 227 * 1024, 2048, 128, 143771, 989.0),
    "a100-80gb": Gpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1.41, 40 * MiB, 2.039e12,
                     164 * 1024, 163 * 1024, 2048, 64, 81920, 312.0),
    "l40s": Gpu("NVIDIA L40S", (8, 9), 142, 2.52, 96 * MiB, 0.864e12,
                100 * 1024, 99 * 1024, 1536, 128, 46068, 362.0),
    "t4": Gpu("Tesla T4", (7, 5), 40, 1.59, 4 * MiB, 0.32e12,
              64 * 1024, 64 * 1024, 1024, 64, 15360, 65.0),
}

# HBM per chip and dense bf16 peak per chip, by the generation libtpu names.
TPU_HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
TPU_BF16_TFLOPS = {"v4": 275.0, "v5e": 197.0, "v5p": 459.0, "v6e": 918.0}


class TargetUnavailable(Exception):
  """The target's compiler is not installed (or cannot start): one line, with the fix."""


@dataclasses.dataclass(frozen=True)
class Target:
  """A compile target: a GPU model or a TPU slice."""
  name: str  # as given to --target
  platform: str  # "cuda" or "tpu": the PJRT plugin that compiles
  gpu: Gpu | None = None
  tpu_topology: str | None = None  # libtpu's name, e.g. "v5e:4x4"

  @property
  def attention_platform(self) -> str:
    """What `layers.resolve_attention_impl` should answer for: "gpu" or "tpu"."""
    return "gpu" if self.gpu else "tpu"

  @property
  def usable_fraction(self) -> float:
    return 0.75 if self.gpu else 1.0

  @property
  def generation(self) -> str | None:
    return re.split("[:-]", self.tpu_topology)[0] if self.tpu_topology else None

  def bf16_tflops(self) -> float:
    return self.gpu.bf16_tflops if self.gpu else TPU_BF16_TFLOPS[self.generation]

  def memory_per_device(self, devices) -> int:
    """Bytes of one device: the GPU's memory, or the chip's HBM over the devices
    libtpu makes of one chip (v4's two TensorCores are two devices here)."""
    if self.gpu:
      return self.gpu.memory_mib * MiB
    per_chip = {}
    for d in devices:
      key = tuple(getattr(d, "coords", (d.id,)))
      per_chip[key] = per_chip.get(key, 0) + 1
    return TPU_HBM_GIB[self.generation] * GiB // max(per_chip.values())


def parse(name: str) -> Target:
  """'h100' / 'tpu:v5e:4x4' / 'tpu:v4-8' -> Target; ValueError naming the choices."""
  key = name.strip().lower()
  if key in GPUS:
    return Target(name=key, platform="cuda", gpu=GPUS[key])
  match = re.fullmatch(r"tpu:(v[0-9][a-z]*)([:-][0-9x]+)", key)
  if match:
    generation, shape = match.groups()
    if generation not in TPU_HBM_GIB:
      raise ValueError(f"--target={name}: TPU generation {generation!r} unknown; use one "
                       f"of {sorted(TPU_HBM_GIB)}.")
    # libtpu takes both the chip grid ("v4:2x2x1") and the Cloud name ("v4-8").
    return Target(name=key, platform="tpu", tpu_topology=generation + shape)
  raise ValueError(f"--target={name}: use a GPU ({', '.join(GPUS)}) or a TPU slice "
                   "tpu:<generation>:<chips>, e.g. tpu:v5e:4x4, tpu:v4-8, tpu:v5p:2x2x1, "
                   "tpu:v6e:2x2.")


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def check_installed(target: Target) -> None:
  """Raises TargetUnavailable (one line naming the install command) unless the
  target's compiler plugin is installed at the version of jaxlib."""
  jaxlib = _version("jaxlib")
  if target.gpu:
    plugin, module, extra = "jax-cuda12-plugin", "jax_plugins.xla_cuda12", GPU_EXTRA
  else:
    plugin, module, extra = "libtpu", "libtpu", TPU_EXTRA
  if importlib.util.find_spec(module.split(".")[0]) is None or (
      target.gpu and importlib.util.find_spec(module) is None):
    raise TargetUnavailable(
        f"--target={target.name} needs XLA's {'GPU' if target.gpu else 'TPU'} compiler, "
        f"which is not installed: run `{extra}` (an optional extra, ~"
        f"{'6 GB of CUDA wheels' if target.gpu else '0.3 GB'}; no accelerator needed).")
  if target.gpu and _version(plugin) != jaxlib:
    raise TargetUnavailable(
        f"--target={target.name}: {plugin} {_version(plugin)} does not match jaxlib "
        f"{jaxlib}; run `pip install \"jax[cuda12]=={jaxlib}\"`.")


def prepare_environment(target: Target) -> None:
  """What the compiler needs, set before JAX starts a backend: CPU as the only
  runtime platform (no device is looked for), no CUDA driver/library version
  check, XLA's GPU flags for compiling without autotuning."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  if target.gpu:
    os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in GPU_XLA_FLAGS:
      if flag.split("=")[0] not in flags:
        flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags
  else:  # libtpu looks for the VM's metadata server otherwise (and warns)
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # No chips to share: let two compiles run at once (else the second fails on
    # libtpu's /tmp/libtpu_lockfile).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def gpu_target_config(gpu: Gpu) -> str:
  """The GpuTargetConfigProto text of `gpu`, with the installed CUDA and cuDNN."""
  from jax._src.lib import cuda_versions  # pylint: disable=import-outside-toplevel
  cudnn = cuda_versions.cudnn_get_version()  # e.g. 92800 = 9.28.0
  cuda = cuda_versions.cuda_runtime_get_version()  # e.g. 12090 = 12.9
  major, minor = gpu.compute_capability
  info = {
      "threads_per_block_limit": 1024, "threads_per_warp": 32,
      "shared_memory_per_block": 48 * 1024, "shared_memory_per_core": gpu.shared_per_sm,
      "threads_per_core_limit": gpu.threads_per_sm, "core_count": gpu.sm_count,
      "fpus_per_core": gpu.fp32_per_sm, "block_dim_limit_x": 2 ** 31 - 1,
      "block_dim_limit_y": 65535, "block_dim_limit_z": 65535,
      "memory_bandwidth": int(gpu.bandwidth_bytes_s), "l2_cache_size": gpu.l2_bytes,
      "clock_rate_ghz": gpu.clock_ghz, "device_memory_size": gpu.memory_mib * MiB,
      "shared_memory_per_block_optin": gpu.shared_per_block_optin,
      "registers_per_core_limit": 65536, "registers_per_block_limit": 65536,
  }
  lines = ["gpu_device_info {"] + [f"  {k}: {v}" for k, v in info.items()]
  lines += [f"  cuda_compute_capability {{ major: {major} minor: {minor} }}", "}",
            'platform_name: "CUDA"',
            f"dnn_version_info {{ major: {cudnn // 10000} minor: {cudnn // 100 % 100} "
            f"patch: {cudnn % 100} }}",
            f"runtime_version {{ major: {cuda // 1000} minor: {cuda // 10 % 100} patch: 0 }}",
            f'device_description_str: "{gpu.description}"']
  return "\n".join(lines) + "\n"


def devices(target: Target, num_devices: int | None = None) -> list:
  """The target's compile-only devices: `num_devices` GPUs (one host), or the
  TPU slice's devices (num_devices, if given, must match)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  if target.gpu:
    n = num_devices or 1
    topology = topologies.get_topology_desc(
        platform="cuda", topology_name=target.name,
        target_config=gpu_target_config(target.gpu), topology=f"1x1x{n}")
    return list(topology.devices)
  topology = topologies.get_topology_desc(topology_name=target.tpu_topology,
                                          platform="tpu")
  found = list(topology.devices)
  if num_devices is not None and num_devices != len(found):
    raise ValueError(f"--target={target.name} has {len(found)} devices but the mesh "
                     f"covers {num_devices}: give a mesh of {len(found)} devices (e.g. "
                     f"--mesh=data:{len(found)}) or another slice.")
  return found
