"""Entry point: `python -m hrm_jax.main --config=experiments/sudoku.py:cpu --workdir=DIR`.

Deliberately short: reads flags, starts jax.distributed when running on several
processes, logs the platform and hands over to `train.train_and_evaluate`. No
other module reads flags, so the trainer can be called from tests and notebooks.

Every `--jax_*` option of JAX is a flag here too (e.g. `--jax_num_cpu_devices=4`
for fake CPU devices, `--jax_platforms=cpu`).

Multi-process: on Cloud TPU pods and SLURM/Open MPI clusters `jax.distributed`
finds its coordinator by itself (`--distributed=auto`, the default, initialises
whenever such an environment is detected). Elsewhere pass
`--distributed=on --coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""
import os

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from hrm_jax import log_filters

# Every jax_* config option becomes an absl flag (big_vision does the same).
jax.config.parse_flags_with_absl()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file, e.g. experiments/maze.py or experiments/maze.py:cpu.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "auto: initialise jax.distributed when a cluster environment (TPU pod, SLURM, "
    "Open MPI) or --coordinator_address is present.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")


def _want_distributed() -> bool:
  if _DISTRIBUTED.value == "on":
    return True
  if _DISTRIBUTED.value == "off":
    return False
  return _COORDINATOR.value is not None or any(v in os.environ for v in _CLUSTER_ENV)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required (where checkpoints and metrics go).")
  logging.get_absl_handler().addFilter(log_filters.QuietLibraries())
  config = _CONFIG.value
  if config.get("enable_x64", False):
    # float64 stablemax, as the reference; must precede any JAX computation.
    jax.config.update("jax_enable_x64", True)
  if _want_distributed():
    # Must precede every other JAX call.
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  from hrm_jax import train  # pylint: disable=import-outside-toplevel
  logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s).",
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
  train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
