"""Train (or resume) a model: python -m hrm_jax.main --config=FILE[:VARIANTS] --workdir=DIR

  python -m hrm_jax.main --config=experiments/sudoku.py:cpu --workdir=/tmp/sudoku
  python -m hrm_jax.main --config=experiments/maze.py --workdir=/tmp/maze \\
      --config.data.source=csv:/data/maze-30x30-hard-1k --config.total_steps=5000

Rerunning the same command resumes from the last checkpoint, exactly;
Ctrl-C or SIGTERM saves a checkpoint at the next step and exits (a second
Ctrl-C aborts at once). Errors print as `hrm_jax.main: error: ...`, exit
status 2 for a command that cannot work as typed and 1 for a failure at run
time; HRM_JAX_TRACEBACK=1 or --verbosity=1 adds the traceback.

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
import difflib
import os
import signal
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from hrm_jax import errors, log_filters, preemption

TOOL = "hrm_jax.main"

# Every jax_* config option becomes an absl flag (big_vision does the same).
jax.config.parse_flags_with_absl()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file and variants, e.g. experiments/maze.py or "
    "experiments/arc.py:arc2,cpu (--help lists them); then "
    "--config.FIELD=VALUE overrides any field.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://): "
                               "checkpoints, metrics, config.json; rerun to resume.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "auto: initialise jax.distributed when a cluster environment (TPU pod, SLURM, "
    "Open MPI) or --coordinator_address is present.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")
_HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


def _want_distributed() -> bool:
  if _DISTRIBUTED.value == "on":
    return True
  if _DISTRIBUTED.value == "off":
    return False
  return _COORDINATOR.value is not None or any(v in os.environ for v in _CLUSTER_ENV)


def _check_cluster_environment() -> None:
  """SLURM_JOB_ID alone (an sbatch script or salloc shell, no srun) would start
  jax.distributed without peers; say how to launch instead."""
  if (_DISTRIBUTED.value == "auto" and _COORDINATOR.value is None
      and "SLURM_JOB_ID" in os.environ and "SLURM_STEP_NODELIST" not in os.environ):
    raise errors.UsageError(
        f"SLURM_JOB_ID={os.environ['SLURM_JOB_ID']} is set but this process was not "
        "started by srun (no SLURM_STEP_NODELIST), so jax.distributed has no peers: "
        "launch through srun (launch/slurm_gpu.sbatch does), or pass "
        "--distributed=off to train in this one process.")


# ------------------------------------------------------------ flag parsing


def _config_arg(argv) -> str | None:
  """The value of --config in argv (`--config=X` or `--config X`)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv) -> list[str]:
  """The field paths of every --config.a.b[=v] (and --noconfig.flag) in argv."""
  paths = []
  for arg in argv:
    for prefix in ("--config.", "--noconfig."):
      if arg.startswith(prefix):
        paths.append(arg[len(prefix):].split("=", 1)[0])
  return paths


def _experiments_text() -> str:
  from experiments import common  # pylint: disable=import-outside-toplevel
  return ", ".join(e.path for e in common.list_experiments())


def _closest_fields(typed: str, paths: list[str], n: int = 3) -> list[str]:
  """The config fields nearest to a mistyped path: by the whole path and by its
  last name (also against the words of each field's name, so a misplaced
  `train.stepz` still finds `total_steps`)."""
  ratio = lambda a, b: difflib.SequenceMatcher(None, a, b).ratio()
  leaf = typed.rsplit(".", 1)[-1]

  def score(path):
    name = path.rsplit(".", 1)[-1]
    by_name = max([ratio(leaf, name)] + [ratio(leaf, w) for w in name.split("_")])
    return (by_name + ratio(typed, path)) / 2

  ranked = sorted(paths, key=score, reverse=True)
  return [p for p in ranked[:n] if score(p) >= 0.6]


def _unknown_field(config, path: str) -> str | None:
  """None if `path` names a field of `config`, else the message (did you mean)."""
  from experiments import common  # pylint: disable=import-outside-toplevel
  node, done = config, []
  for part in path.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = "config" + ("." + ".".join(done) if done else "")
      if not keys:
        return (f"--config.{path}: {where} is a {type(node).__name__} value, not a "
                f"group of fields (no {part!r} in it).")
      guesses = _closest_fields(path, common.field_paths(config))
      hint = (" (did you mean " + " or ".join(f"--config.{g}" for g in guesses) + "?)"
              if guesses else "")
      if part != path.rsplit(".", 1)[-1]:  # used as a group: name the groups
        groups = [k for k in keys if hasattr(node[k], "keys")]
        hint += f"; its groups are {', '.join(groups)}"
      return (f"--config.{path}: {where} has no field {part!r}{hint}. A run's "
              "WORKDIR/config.json lists every field.")
    node, done = node[part], done + [part]
  return None


def _diagnose(argv) -> str | None:
  """What is wrong with --config and its overrides, or None if nothing is."""
  value = _config_arg(argv)
  if value is None:
    return ("--config is required: an experiment file, e.g. "
            f"--config=experiments/sudoku.py:cpu (experiment files: {_experiments_text()}; "
            "--help lists their variants).")
  path, _, variant = value.partition(":")
  if not os.path.isfile(path):
    return (f"--config={value}: no experiment file {path!r} (looked in {os.getcwd()}). "
            f"Experiment files: {_experiments_text()}.")
  from experiments import common  # pylint: disable=import-outside-toplevel
  try:
    config = common.load_experiment(path).get_config(variant or None)
  except Exception as e:  # pylint: disable=broad-exception-caught
    return f"--config={value}: {e}"
  for field in _overrides(argv):
    problem = _unknown_field(config, field)
    if problem:
      return problem
  return None


def _flag_error_text(error: Exception) -> str:
  text = str(error).strip()
  if "Traceback (most recent call last)" in text:  # config_flags embeds tracebacks
    text = text.splitlines()[-1]
  return text.splitlines()[0] if text else repr(error)


def _help_text() -> str:
  from experiments import common  # pylint: disable=import-outside-toplevel
  lines = ["", "Experiment files (--config=FILE[:VARIANT,...]; no variant = the paper's "
           "configuration on accelerators):"]
  for e in common.list_experiments():
    lines.append(f"  {e.path}: {e.summary}")
    lines.append(f"      variants: {', '.join(e.variants) or '(none)'}")
  lines += [
      "Variants combine with commas (experiments/arc.py:arc2,cpu); `cpu` learns in "
      "minutes on a laptop, `smoke` runs in seconds.",
      "",
      "Overrides: any config field on the command line, --config.FIELD=VALUE, e.g.",
      "  --config.total_steps=2000 --config.batch_size=64 --config.data.data_dir=/data",
      "  --config.model.hidden_size=256 --config.opt.lr=3e-4 --config.profile_steps=5",
      "A misspelt field fails with the closest names. The full config of a run is in "
      "WORKDIR/config.json; datasets are built once into config.data.data_dir "
      "(default ~/hrm_jax_data).", ""]
  return "\n".join(lines)


def parse_flags(argv):
  """absl's flag parsing, with one-line messages (exit status 2) for a bad
  --config, a variant or an override, and the experiments listed by --help."""
  if any(a in _HELP_FLAGS for a in argv[1:]):
    module = sys.modules.get("__main__")
    if module is not None and module.__doc__ is not None:
      module.__doc__ = (module.__doc__ + _help_text()).replace("%", "%%")
  failed = None
  try:
    remaining = flags.FLAGS(argv)
  except SystemExit:
    if any(a in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)  # absl exits 1 after printing the help that was asked for
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    failed = e  # flags.Error, or what loading the experiment file raised
  value = _config_arg(argv)
  if failed is None and value is not None and not os.path.isfile(value.partition(":")[0]):
    # config_flags defers a missing file's error to the first use of the config.
    failed = FileNotFoundError(value)
  if failed is None:
    return remaining
  try:
    problem = _diagnose(argv)
  except Exception:  # pylint: disable=broad-exception-caught
    problem = None
  print(f"{TOOL}: error: {problem or _flag_error_text(failed)}", file=sys.stderr)
  sys.exit(errors.USAGE)


# ----------------------------------------------------------------- the run


def main(argv):
  if len(argv) > 1:
    print(f"{TOOL}: error: unexpected arguments {argv[1:]} (every option is a --flag; "
          "--help lists them)", file=sys.stderr)
    sys.exit(errors.USAGE)
  if _WORKDIR.value is None:
    print(f"{TOOL}: error: --workdir is required (where checkpoints and metrics go; "
          "rerun with the same one to resume).", file=sys.stderr)
    sys.exit(errors.USAGE)
  if flags.FLAGS.verbosity < 1:  # --verbosity=1 shows every library record
    logging.get_absl_handler().addFilter(log_filters.QuietLibraries())
    log_filters.quiet_closed_event_loop()
  config = _CONFIG.value
  workdir = _WORKDIR.value
  existed = os.path.exists(workdir)
  distributed = False
  try:
    _check_cluster_environment()
    distributed = _want_distributed()
    # One process: SIGTERM before the train loop raises, so half-built data and
    # generator workers are cleaned up (preemption.py); the loop then saves.
    with preemption.raise_on_sigterm(enabled=not distributed):
      if config.get("enable_x64", False):
        # float64 stablemax, as the reference; must precede any JAX computation.
        jax.config.update("jax_enable_x64", True)
      if distributed:
        # Must precede every other JAX call.
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
      from hrm_jax import train, workdir as workdir_lib  # pylint: disable=import-outside-toplevel
      workdir_lib.check_writable(workdir)
      logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s).",
                   jax.__version__, jax.process_index(), jax.process_count(),
                   jax.local_device_count(), jax.device_count(),
                   jax.devices()[0].platform)
      result = train.train_and_evaluate(config, workdir)
  except (Exception, KeyboardInterrupt, preemption.Interrupted) as e:  # pylint: disable=broad-exception-caught
    if not existed and not distributed:  # nothing of the run was written: no trace
      from hrm_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
      workdir_lib.remove_if_empty(workdir)
    errors.fail(TOOL, e, hint=isinstance(e, Exception), hard_exit=True)
  if result.stop_signal == signal.SIGINT:
    sys.exit(128 + signal.SIGINT)  # the shell's status for Ctrl-C; the run is saved


def run():
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
