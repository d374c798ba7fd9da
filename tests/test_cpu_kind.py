"""CPU kind detection and the CPU recipes' dtype choice (`hrm_jax.cpu_kind`)."""
import pathlib
import platform

import ml_collections

from experiments import maze, sudoku
from hrm_jax import cpu_kind

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse avx avx2 fma bmi2 sha_ni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
flags\t\t: fpu
"""
COOPER_LAKE = "model name\t: Intel Xeon 8353H\nflags\t\t: avx512f avx512_bf16\n"
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sve bf16 i8mm
CPU implementer\t: 0x41
"""


def test_x86_flags_decide_bf16_units():
  zen3 = cpu_kind.parse_cpuinfo(ZEN3, "x86_64")
  assert zen3.model_name == "AMD EPYC 7B13" and zen3.bf16_flags == ()
  assert not zen3.has_bf16_units and cpu_kind.recipe_dtype(zen3) == "float32"
  spr = cpu_kind.parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
  assert spr.bf16_flags == ("avx512_bf16", "amx_bf16")  # first processor's flags only
  assert spr.has_bf16_units and cpu_kind.recipe_dtype(spr) == "bfloat16"
  assert cpu_kind.parse_cpuinfo(COOPER_LAKE, "x86_64").has_bf16_units


def test_other_platforms_are_conservative():
  graviton = cpu_kind.parse_cpuinfo(GRAVITON3, "aarch64")
  assert graviton.bf16_flags == ("bf16",)  # reported ...
  assert not graviton.has_bf16_units  # ... but not used: float32
  assert cpu_kind.recipe_dtype(graviton) == "float32"
  assert "not established" in cpu_kind.dtype_line("float32", graviton)
  missing = cpu_kind.detect("/nonexistent/cpuinfo")
  assert missing.source == "unknown" and cpu_kind.recipe_dtype(missing) == "float32"


def test_dtype_line_says_which_and_why():
  zen3 = cpu_kind.parse_cpuinfo(ZEN3, "x86_64")
  line = cpu_kind.dtype_line("float32", zen3)
  assert "AMD EPYC 7B13" in line and "no bfloat16 units" in line
  assert "forward dtype float32" in line and "recipes' choice" in line
  assert "emulated" in cpu_kind.dtype_line("bfloat16", zen3)
  spr = cpu_kind.parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
  assert "has bfloat16 units" in cpu_kind.dtype_line("bfloat16", spr)


def test_this_machine_matches_its_cpuinfo():
  kind = cpu_kind.detect()
  path = pathlib.Path(cpu_kind.CPUINFO)
  if not path.exists():
    assert not kind.has_bf16_units
    return
  flags = set()
  for line in path.read_text().splitlines():
    if line.lower().startswith(("flags", "features")):
      flags = set(line.partition(":")[2].split())
      break
  x86 = platform.machine().lower() in cpu_kind.X86_MACHINES
  assert kind.has_bf16_units == (x86 and bool(flags & set(cpu_kind.X86_BF16_FLAGS)))


def test_cpu_recipes_pick_the_detected_dtype():
  want = cpu_kind.recipe_dtype()
  for module in (sudoku, maze):
    c = module.get_config("cpu")
    assert c.model.forward_dtype == want and c.cpu_auto_dtype == want
    # Everything else is the same recipe on either kind.
    assert c.total_steps > 0 and c.batch_size == 128


def _config(dtype, auto=None):
  c = ml_collections.ConfigDict({"model": {"forward_dtype": dtype}})
  if auto is not None:
    c.cpu_auto_dtype = auto
  return c


def test_resume_keeps_the_runs_dtype_unless_told():
  saved = _config("bfloat16", auto="bfloat16")
  # Fresh start, or same dtype: nothing to say.
  assert cpu_kind.resume_dtype(None, _config("float32", "float32")) == ("float32", None)
  assert cpu_kind.resume_dtype(saved, _config("bfloat16", "bfloat16"))[1] is None
  # Moved to a CPU without bf16 units: the automatic choice changed, the run keeps bf16.
  dtype, line = cpu_kind.resume_dtype(saved, _config("float32", auto="float32"))
  assert dtype == "bfloat16" and "as this run started" in line
  assert "--config.model.forward_dtype=float32" in line
  # Set on the command line (differs from the automatic choice): used as given.
  dtype, line = cpu_kind.resume_dtype(saved, _config("float32", auto="bfloat16"))
  assert dtype == "float32" and "Switching" in line
  # The automatic choice turned off (cpu_auto_dtype empty), or a non-recipe config.
  assert cpu_kind.resume_dtype(saved, _config("float32", auto=""))[0] == "float32"
  assert cpu_kind.resume_dtype(saved, _config("float32"))[0] == "float32"
