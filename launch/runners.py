"""Where sweep runs go: this machine, a SLURM job array, or a TPU pod.

Each runner turns the expanded runs (`sweeps.Run`) into commands. Dry runs
print them (and, for SLURM, still write the array script for inspection)
without starting anything, which is what the tests check.
"""
import dataclasses
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Sequence

from launch import sweeps

REPO = pathlib.Path(__file__).resolve().parents[1]
ARRAY_SCRIPT = "sweep_array.sbatch"


def quote(argv: Sequence[str]) -> str:
  return " ".join(shlex.quote(str(a)) for a in argv)


def local_command(run: sweeps.Run) -> list[str]:
  return [sys.executable, "-m", "hrm_jax.main", *run.main_args()]


def run_local(runs: Sequence[sweeps.Run], dry_run: bool) -> int:
  """One run after another on this machine; returns the number that failed."""
  failed = 0
  for run in runs:
    command = local_command(run)
    print(f"# run {run.name}\n{quote(command)}", flush=True)
    if dry_run:
      continue
    sweeps.write_manifest(run)
    code = subprocess.run(command, cwd=REPO, check=False).returncode
    if code:
      failed += 1
      print(f"# run {run.name} failed with exit code {code}", flush=True)
  return failed


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  """#SBATCH settings of every array task (one task = one multi-GPU run)."""
  nodes: int = 1
  gpus_per_node: int = 8
  cpus_per_task: int = 8
  time: str = "24:00:00"
  partition: str | None = None
  account: str | None = None
  max_parallel: int | None = None  # --array=0-9%N: at most N runs at once
  python: str = "python"


def slurm_array_script(runs: Sequence[sweeps.Run], workdir_root: str,
                       options: SlurmOptions) -> str:
  """A job array: task i runs sweep run i with one process per GPU."""
  indices = [run.index for run in runs]
  if indices == list(range(len(runs))):
    array = f"0-{len(runs) - 1}"
  else:
    array = ",".join(str(i) for i in indices)
  if options.max_parallel:
    array += f"%{options.max_parallel}"
  header = [
      "#!/bin/bash",
      "#SBATCH --job-name=hrm-sweep",
      f"#SBATCH --array={array}",
      f"#SBATCH --nodes={options.nodes}",
      f"#SBATCH --ntasks-per-node={options.gpus_per_node}",
      f"#SBATCH --gpus-per-node={options.gpus_per_node}",
      f"#SBATCH --cpus-per-task={options.cpus_per_task}",
      f"#SBATCH --time={options.time}",
      # SIGTERM 5 min before the limit: the trainer checkpoints and exits 0.
      "#SBATCH --signal=TERM@300",
      f"#SBATCH --output={workdir_root}/slurm-%A_%a.out",
  ]
  if options.partition:
    header.append(f"#SBATCH --partition={options.partition}")
  if options.account:
    header.append(f"#SBATCH --account={options.account}")
  cases = []
  for run in runs:
    cases.append(f"  {run.index}) RUN_ARGS=({quote(run.main_args())}) ;;")
  body = [
      "# Written by launch/sweep.py --runner=slurm; one array task per sweep run.",
      "set -euo pipefail",
      f"HRM_REPO=${{HRM_REPO:-{shlex.quote(str(REPO))}}}",
      "cd \"$HRM_REPO\"",
      "case \"$SLURM_ARRAY_TASK_ID\" in",
      *cases,
      "  *) echo \"no sweep run $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;",
      "esac",
      f"srun --kill-on-bad-exit=1 {shlex.quote(options.python)} launch/slurm.py "
      "--per=gpu -- \"${RUN_ARGS[@]}\"",
  ]
  return "\n".join(header + [""] + body) + "\n"


def run_slurm(runs: Sequence[sweeps.Run], workdir_root: str, options: SlurmOptions,
              dry_run: bool) -> int:
  """Writes manifests and the array script; submits it unless dry_run."""
  root = pathlib.Path(workdir_root)
  if "://" in workdir_root:
    raise ValueError("--runner=slurm needs a shared filesystem path as --workdir_root.")
  root.mkdir(parents=True, exist_ok=True)
  for run in runs:
    sweeps.write_manifest(run)
  script = root / ARRAY_SCRIPT
  script.write_text(slurm_array_script(runs, workdir_root, options))
  command = ["sbatch", str(script)]
  print(f"# wrote {script} ({len(runs)} array tasks)")
  print(script.read_text(), end="")
  print(quote(command), flush=True)
  if dry_run:
    return 0
  return subprocess.run(command, check=False).returncode


@dataclasses.dataclass(frozen=True)
class TpuOptions:
  tpu: str | None = None
  zone: str | None = None
  project: str | None = None


def tpu_commands(runs: Sequence[sweeps.Run], options: TpuOptions) -> list[list[str]]:
  """launch/tpu_pod.sh once per run; the package is set up with the first only."""
  if not options.tpu or not options.zone:
    raise ValueError("--runner=tpu needs --tpu and --zone.")
  commands = []
  for run in runs:
    command = [str(REPO / "launch" / "tpu_pod.sh"), f"--tpu={options.tpu}",
               f"--zone={options.zone}"]
    if options.project:
      command.append(f"--project={options.project}")
    if commands:
      command.append("--skip_setup")
    commands.append(command + ["--", *run.main_args()])
  return commands


def run_tpu(runs: Sequence[sweeps.Run], options: TpuOptions, dry_run: bool) -> int:
  """Runs occupy the whole pod, so they go one after another."""
  failed = 0
  for run, command in zip(runs, tpu_commands(runs, options)):
    print(f"# run {run.name}\n{quote(command)}", flush=True)
    if dry_run:
      continue
    sweeps.write_manifest(run)
    code = subprocess.run(command, check=False, env=dict(os.environ)).returncode
    failed += bool(code)
  return failed
