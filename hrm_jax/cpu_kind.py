"""What kind of CPU this is, and the forward dtype the CPU recipes run on it.

The one owner of "does this CPU have bfloat16 units": the CPU recipes
(`experiments/common.cpu_recipe`), the step's start-up log line
(`steps.build_train_step`) and `benchmarks/train_step.py` all ask here.

Why it matters: XLA:CPU runs bfloat16 matmuls on native units where the CPU
has them (x86 AVX512_BF16, AMX-BF16): there bf16 was 1.5-2x the float32 step
rate (BUILD_NOTES.md). Without them (e.g. AMD Zen 3, most laptops) bf16 dots
are converted to float32 around every matmul, so bf16 saves only memory
traffic while giving up the reference's float32 numerics. The recipes
therefore pick bfloat16 only where the units are present, float32 otherwise.
x86 is read from /proc/cpuinfo's flags; other platforms (ARM's `bf16`
feature, macOS without /proc/cpuinfo) get float32: XLA:CPU's use of their bf16
instructions is not established, and float32 is never wrong.

Resume: the dtype is part of a run. The recipe records its automatic choice
in `config.cpu_auto_dtype` next to `config.model.forward_dtype`, and
WORKDIR/config.json records the dtype the run used. `resume_dtype` decides
what a resumed run uses: if the dtype differs from the saved one only because
the automatic choice differs on this machine (the run moved to another CPU
kind), the run keeps its saved dtype and says so; a dtype set on the command
line (`--config.model.forward_dtype=...`, e.g. float32 after bf16 NaNs) is
used as given, with a line saying it switches.
"""
from __future__ import annotations

import dataclasses
import functools
import platform
from typing import Any

CPUINFO = "/proc/cpuinfo"
# /proc/cpuinfo flags of x86 bf16 dot units: AVX512_BF16 (Cooper Lake, Zen 4+,
# Sapphire Rapids) and AMX-BF16 tiles (Sapphire Rapids and later).
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


@dataclasses.dataclass(frozen=True)
class CpuKind:
  """The host CPU as far as the choice of dtype goes.

  Attributes:
    model_name: "model name" of /proc/cpuinfo (or platform.processor()).
    machine: platform.machine(), e.g. x86_64, aarch64, arm64.
    bf16_flags: the bf16 features found (x86: of X86_BF16_FLAGS; ARM: "bf16").
    source: where the flags came from (/proc/cpuinfo or "unknown").
  """
  model_name: str
  machine: str
  bf16_flags: tuple[str, ...]
  source: str

  @property
  def is_x86(self) -> bool:
    return self.machine.lower() in X86_MACHINES

  @property
  def has_bf16_units(self) -> bool:
    """Native bf16 dot units XLA:CPU is known to use (x86 only: see module doc)."""
    return self.is_x86 and bool(self.bf16_flags)

  def describe(self) -> str:
    flags = ", ".join(self.bf16_flags) if self.bf16_flags else "none"
    return f"{self.model_name} ({self.machine}; bf16 features: {flags})"


def parse_cpuinfo(text: str, machine: str) -> CpuKind:
  """The CpuKind of a /proc/cpuinfo text (the first processor's entries)."""
  model_name, flags = "", set()
  for line in text.splitlines():
    key, sep, value = line.partition(":")
    if not sep:
      continue
    key = key.strip().lower()
    if key in ("model name", "cpu model", "hardware") and not model_name:
      model_name = value.strip()
    elif key in ("flags", "features") and not flags:
      flags = set(value.split())
  if machine.lower() in X86_MACHINES:
    found = tuple(f for f in X86_BF16_FLAGS if f in flags)
  else:
    found = ("bf16",) if "bf16" in flags else ()
  return CpuKind(model_name or platform.processor() or "unknown CPU", machine, found,
                 CPUINFO)


@functools.lru_cache(maxsize=None)
def detect(cpuinfo_path: str = CPUINFO) -> CpuKind:
  """This machine's CpuKind (cached). Without a readable /proc/cpuinfo (macOS,
  Windows): no bf16 features known."""
  machine = platform.machine() or "unknown"
  try:
    with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
      return parse_cpuinfo(f.read(), machine)
  except OSError:
    return CpuKind(platform.processor() or "unknown CPU", machine, (), "unknown")


def recipe_dtype(kind: CpuKind | None = None) -> str:
  """The CPU recipes' forward dtype: bfloat16 with bf16 units, else float32."""
  kind = detect() if kind is None else kind
  return "bfloat16" if kind.has_bf16_units else "float32"


def dtype_line(forward_dtype: str, kind: CpuKind | None = None) -> str:
  """One log line: the step's dtype on this CPU and why it is (or is not) right."""
  kind = detect() if kind is None else kind
  if kind.has_bf16_units:
    why = "has bfloat16 units"
  elif kind.bf16_flags:
    why = "reports bf16 but XLA:CPU's use of it is not established off x86"
  else:
    why = "has no bfloat16 units (no AVX512_BF16/AMX-BF16)"
  line = f"CPU {kind.describe()} {why}; forward dtype {forward_dtype}"
  if forward_dtype == recipe_dtype(kind):
    return line + " (the CPU recipes' choice here)."
  if forward_dtype in ("bfloat16", "float16"):
    return line + ": bf16 matmuls are emulated on this CPU, float32 is likely faster."
  return line + ": bfloat16 would be faster on this CPU."


def resume_dtype(saved_config: Any | None, config: Any) -> tuple[str, str | None]:
  """The forward dtype a resumed run uses, and the line to log (None: nothing changed).

  Args:
    saved_config: WORKDIR/config.json of the run (None on a fresh start).
    config: the run's config as built now.

  Returns:
    (dtype, message). The saved dtype is kept when the fresh one differs only
    because `config.cpu_auto_dtype` (the recipe's automatic choice) does.
  """
  now = config.model.forward_dtype
  saved = None
  if saved_config is not None:
    saved = saved_config.get("model", {}).get("forward_dtype")
  if saved is None or saved == now:
    return now, None
  auto = config.get("cpu_auto_dtype", "")
  if auto and now == auto:
    return saved, (f"Resuming in {saved} as this run started (config.json), although the "
                   f"CPU recipe picks {now} on this machine ({detect().describe()}); to "
                   f"switch pass --config.model.forward_dtype={now} "
                   "--config.cpu_auto_dtype= (empty).")
  return now, f"Switching the forward dtype from {saved} (config.json) to {now} as asked."
