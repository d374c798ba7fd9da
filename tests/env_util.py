"""Environments for the subprocesses that tests start."""
import os


def single_device_env() -> dict[str, str]:
  """os.environ minus conftest's 8 fake CPU devices: a tiny model compiles and
  trains ~2x faster on one device, and its checkpoint restores on any count."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  return env
