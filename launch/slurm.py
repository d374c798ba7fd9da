r"""Per-task wrapper of SLURM jobs: SLURM variables -> `hrm_jax.main` flags.

Run once per task by `srun` (see launch/slurm_gpu.sbatch):

  srun python launch/slurm.py [--per=gpu|node] -- --config=... --workdir=...

It execs `python -m hrm_jax.main --distributed=on --coordinator_address=HOST:PORT
--num_processes=$SLURM_NTASKS --process_id=$SLURM_PROCID ARGS`, where HOST is
the first host of the job (`scontrol show hostnames $SLURM_JOB_NODELIST`) and
PORT is --port or derived from the job id (two jobs sharing a first node do
not collide).

GPUs: with --per=gpu (one task per GPU) each process is given exactly one GPU,
the SLURM_LOCALID-th of the node's visible GPUs, through CUDA_VISIBLE_DEVICES.
With --per=node (one task per node) each process sees all of the node's GPUs.
In both cases SLURM_LOCALID is removed from the child's environment: when it
is present, jax.distributed.initialize restricts a process to local device
[SLURM_LOCALID], which would leave a per-node process with one GPU and clash
with the CUDA_VISIBLE_DEVICES choice above.

Dry runs (`--dry_run`) print the command instead of exec'ing it; `--simulate
NODES:TASKS_PER_NODE` prints the commands of every task of such an
allocation, with a made-up SLURM environment (what the tests check).
"""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from typing import Mapping, Sequence

if __package__ in (None, ""):  # run as a file: make `launch` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # pylint: disable=wrong-import-position

_PER = flags.DEFINE_enum("per", "gpu", ["gpu", "node"], "One process per GPU or per node.")
_PORT = flags.DEFINE_integer("port", None, "Coordinator port (default: from the job id).")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Python that runs hrm_jax.main.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the command instead of running it.")
_SIMULATE = flags.DEFINE_string(
    "simulate", None, "NODES:TASKS_PER_NODE: print every task's command for such a "
    "job (implies --dry_run; needs no SLURM).")
_NODELIST = flags.DEFINE_string("simulate_nodelist", None,
                                "Node list of --simulate (default gpu-[001-NNN]).")

BASE_PORT = 20000


def expand_hostlist(nodelist: str) -> list[str]:
  """Python version of `scontrol show hostnames` for common SLURM host lists.

  Handles "a,b", "node[01-03,07]", "rack[1-2]-gpu[01-02]" (ranges keep their
  zero padding). Used when scontrol is not on PATH (dry runs, tests).
  """
  hosts = []
  for item in re.findall(r"(?:[^,\[]+|\[[^\]]*\])+", nodelist):
    expansions = [""]
    for text, bracket in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
      choices = [text]
      if bracket:
        choices = []
        for part in bracket.split(","):
          lo, _, hi = part.partition("-")
          if hi:
            choices += [f"{text}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
          else:
            choices.append(text + lo)
      expansions = [e + c for e in expansions for c in choices]
    hosts += [e for e in expansions if e]
  return hosts


def hostnames(nodelist: str) -> list[str]:
  """Hosts of a SLURM node list, via scontrol when available."""
  if shutil.which("scontrol"):
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                         capture_output=True, text=True).stdout
    return out.split()
  return expand_hostlist(nodelist)


def coordinator_address(env: Mapping[str, str], port: int | None = None) -> str:
  """HOST:PORT of process 0: the first host of the job."""
  nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
  if not nodelist:
    raise RuntimeError("SLURM_JOB_NODELIST is not set: run this under srun/sbatch.")
  if port is None:
    port = BASE_PORT + int(env.get("SLURM_JOB_ID", "0")) % 10000
  return f"{hostnames(nodelist)[0]}:{port}"


def child_env(env: Mapping[str, str], per: str) -> dict[str, str]:
  """The environment of the training process (see the module docstring)."""
  child = dict(env)
  local_id = child.pop("SLURM_LOCALID", None)
  if per == "gpu" and local_id is not None:
    visible = [d for d in child.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if len(visible) != 1:  # unset or the whole node: pick ours
      child["CUDA_VISIBLE_DEVICES"] = visible[int(local_id)] if visible else local_id
  return child


def main_command(env: Mapping[str, str], args: Sequence[str], python: str,
                 port: int | None = None) -> list[str]:
  """`python -m hrm_jax.main` with the distributed flags of this task."""
  return [python, "-m", "hrm_jax.main", "--distributed=on",
          f"--coordinator_address={coordinator_address(env, port)}",
          f"--num_processes={int(env['SLURM_NTASKS'])}",
          f"--process_id={int(env['SLURM_PROCID'])}", *args]


def simulated_envs(nodes: int, tasks_per_node: int, nodelist: str | None,
                   job_id: int = 4242) -> list[dict[str, str]]:
  """The SLURM variables srun would give each task of such a job."""
  nodelist = nodelist or f"gpu-[{1:03d}-{nodes:03d}]"
  hosts = expand_hostlist(nodelist)
  envs = []
  for proc in range(nodes * tasks_per_node):
    envs.append({"SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": nodelist,
                 "SLURM_NTASKS": str(nodes * tasks_per_node),
                 "SLURM_PROCID": str(proc), "SLURM_LOCALID": str(proc % tasks_per_node),
                 "SLURMD_NODENAME": hosts[proc // tasks_per_node]})
  return envs


def describe(env: Mapping[str, str], command: Sequence[str], per: str) -> str:
  child = child_env(env, per)
  gpus = child.get("CUDA_VISIBLE_DEVICES", "<all>")
  host = env.get("SLURMD_NODENAME", "?")
  return (f"# task {env['SLURM_PROCID']} on {host}: CUDA_VISIBLE_DEVICES={gpus}\n"
          + " ".join(shlex.quote(c) for c in command))


def main(argv):
  args = argv[1:]
  if args and args[0] == "--":
    args = args[1:]
  if _SIMULATE.value:
    nodes, _, per_node = _SIMULATE.value.partition(":")
    for env in simulated_envs(int(nodes), int(per_node or 1), _NODELIST.value):
      print(describe(env, main_command(env, args, _PYTHON.value, _PORT.value), _PER.value))
    return 0
  env = dict(os.environ)
  command = main_command(env, args, _PYTHON.value, _PORT.value)
  if _DRY_RUN.value:
    print(describe(env, command, _PER.value))
    return 0
  repo = pathlib.Path(__file__).resolve().parents[1]
  os.chdir(repo)  # relative --config paths are relative to the repository
  os.execvpe(command[0], command, child_env(env, _PER.value))


if __name__ == "__main__":
  app.run(main)
