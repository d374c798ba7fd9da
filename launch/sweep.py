r"""Hyperparameter sweeps: expand an experiment's sweep(add), run it, tabulate it.

  # What would run (nothing starts):
  python launch/sweep.py --config=experiments/sudoku.py --runner=local --dry_run \
      --workdir_root=/tmp/sweep
  # On this machine, one after another (use :cpu or :smoke configs):
  python launch/sweep.py --config=experiments/sudoku.py:cpu --runner=local \
      --workdir_root=/tmp/sweep [--runs=0,3]
  # A SLURM job array (writes ROOT/sweep_array.sbatch, then sbatch's it):
  python launch/sweep.py --config=experiments/arc.py --runner=slurm \
      --workdir_root=/shared/sweeps/arc --slurm_nodes=1 --slurm_gpus_per_node=8
  # A TPU pod, runs one after another (launch/tpu_pod.sh each):
  python launch/sweep.py --config=experiments/arc.py --runner=tpu --tpu=my-v4-64 \
      --zone=us-central2-b --workdir_root=gs://bucket/sweeps/arc
  # The table, best first:
  python launch/sweep.py summarize --workdir_root=/tmp/sweep \
      [--metric=eval/exact_accuracy] [--format=md|csv]

`--sweep=name` uses `sweep_<name>(add)` of the experiment file instead of
`sweep(add)`; `--set=key=value` (repeatable) adds an override to every run,
e.g. `--set=data.data_dir=/shared/hrm_data`.
"""
import pathlib
import sys

if __package__ in (None, ""):  # run as a file: make `launch` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # pylint: disable=wrong-import-position

from launch import runners, summarize, sweeps  # pylint: disable=wrong-import-position

_CONFIG = flags.DEFINE_string("config", None, "Experiment file[:variant].")
_SWEEP = flags.DEFINE_string("sweep", None, "Use sweep_<name>(add) instead of sweep(add).")
_RUNNER = flags.DEFINE_enum("runner", "local", ["local", "slurm", "tpu"], "Where runs go.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands; start nothing.")
_ROOT = flags.DEFINE_string("workdir_root", None, "Parent of the runs' workdirs.")
_SET = flags.DEFINE_multi_string("set", [], "key=value override for every run.")
_RUNS = flags.DEFINE_list("runs", None, "Only these run indices (e.g. 0,3).")
_METRIC = flags.DEFINE_string("metric", "eval/exact_accuracy", "summarize: sort key.")
_FORMAT = flags.DEFINE_enum("format", "md", ["md", "csv"], "summarize: table format.")
_LOWER = flags.DEFINE_bool("lower_is_better", None,
                           "summarize: ascending sort (default: metrics ending in 'loss').")
_SLURM_NODES = flags.DEFINE_integer("slurm_nodes", 1, "Nodes per run.")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_node", 8, "GPUs (= processes) per node.")
_SLURM_CPUS = flags.DEFINE_integer("slurm_cpus_per_task", 8, "CPUs per process.")
_SLURM_TIME = flags.DEFINE_string("slurm_time", "24:00:00", "Time limit per run.")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", None, "Partition.")
_SLURM_ACCOUNT = flags.DEFINE_string("slurm_account", None, "Account.")
_SLURM_PARALLEL = flags.DEFINE_integer("slurm_max_parallel", None,
                                       "At most this many runs at once (%N).")
_SLURM_PYTHON = flags.DEFINE_string("slurm_python", "python",
                                    "Python on the nodes (e.g. a venv's bin/python).")
_TPU = flags.DEFINE_string("tpu", None, "TPU VM name (--runner=tpu).")
_ZONE = flags.DEFINE_string("zone", None, "TPU zone.")
_PROJECT = flags.DEFINE_string("project", None, "GCP project.")


def _selected(runs):
  if not _RUNS.value:
    return runs
  wanted = {int(i) for i in _RUNS.value}
  unknown = wanted - {r.index for r in runs}
  if unknown:
    raise app.UsageError(f"--runs: no runs {sorted(unknown)} (sweep has {len(runs)}).")
  return [r for r in runs if r.index in wanted]


def main(argv):
  command = argv[1] if len(argv) > 1 else "run"
  if len(argv) > 2 or command not in ("run", "summarize"):
    raise app.UsageError(f"Usage: sweep.py [run|summarize] --flags; got {argv[1:]}")
  if not _ROOT.value:
    raise app.UsageError("--workdir_root is required.")
  if command == "summarize":
    print(summarize.summarize(_ROOT.value, _METRIC.value, _FORMAT.value, _LOWER.value),
          end="")
    return 0
  if not _CONFIG.value:
    raise app.UsageError("--config is required.")
  runs = _selected(sweeps.expand(_CONFIG.value, _ROOT.value, _SWEEP.value,
                                 sweeps.parse_common(_SET.value)))
  print(f"# {len(runs)} runs of {_CONFIG.value} "
        f"(sweep{'_' + _SWEEP.value if _SWEEP.value else ''}) under {_ROOT.value}")
  if _RUNNER.value == "local":
    failed = runners.run_local(runs, _DRY_RUN.value)
  elif _RUNNER.value == "slurm":
    options = runners.SlurmOptions(
        nodes=_SLURM_NODES.value, gpus_per_node=_SLURM_GPUS.value,
        cpus_per_task=_SLURM_CPUS.value, time=_SLURM_TIME.value,
        partition=_SLURM_PARTITION.value, account=_SLURM_ACCOUNT.value,
        max_parallel=_SLURM_PARALLEL.value, python=_SLURM_PYTHON.value)
    failed = runners.run_slurm(runs, _ROOT.value, options, _DRY_RUN.value)
  else:
    failed = runners.run_tpu(runs, runners.TpuOptions(_TPU.value, _ZONE.value,
                                                      _PROJECT.value), _DRY_RUN.value)
  return 1 if failed else 0


if __name__ == "__main__":
  app.run(main)
