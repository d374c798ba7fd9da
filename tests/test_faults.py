"""Fault suite (issue 12): bad input and hard stops against the real command lines.

Every case runs `python -m hrm_jax.main` (or `solve`) as a subprocess with a
timeout, and checks three things: the exit status (2 for a command that cannot
work as typed, 1 for a failure at run time, 130 for Ctrl-C), the key words of
the one- or two-line message (and no traceback), and that the workdir the
command was pointed at is intact afterwards (config.json and dataset.json
unchanged, checkpoints readable, `solve` still answers).

The acceptance test kills a run with SIGKILL at several moments (after its
first checkpoint, while a save is being written, at a random step), resumes
each time, and ends with parameters bitwise equal to an uninterrupted run.

Cost: one 4-step smoke run and one 200-step reference run per module, shared
by the tests; the runs share a JAX compilation cache (`JAX_COMPILATION_CACHE_DIR`
in a module temp directory) so each restart compiles in ~1 s; processes that
fail before training start in parallel.
"""
import logging
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import env_util
from experiments import sudoku
from hrm_jax import checkpoint, errors, metric_writers, models, sharding, solve, steps
from hrm_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
CHECKSUM = re.compile(r"params checksum[^:]*:\s*(\S+)")
PUZZLE = "3102423124131324"  # a 4x4 board with one blank (the smoke models' size)
REFERENCE_STEPS = 200
# The runs that are interrupted: long enough to be stopped mid-way, checkpoints
# every 20 steps (asynchronous, so a kill can land in the middle of a save), and
# ACT exploration on, so the carry and the RNG both matter for exactness.
REFERENCE = [f"--config.total_steps={REFERENCE_STEPS}", "--config.ckpt.every_steps=20",
             "--config.ckpt.async_save=true", "--config.eval.every_steps=100000",
             "--config.log_every_steps=1", "--config.model.halt_exploration_prob=0.5"]


class Env:
  """Paths and the environment shared by a module's subprocesses."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.data_dir = root / "data"
    self.env = env_util.single_device_env()
    self.env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    for name in ("HRM_JAX_TRACEBACK", "SLURM_JOB_ID", "SLURM_STEP_NODELIST"):
      self.env.pop(name, None)
    # The 4x4 smoke Sudoku, generated in-process (a worker pool costs seconds).
    self.smoke = ["--config=experiments/sudoku.py:smoke",
                  f"--config.data.data_dir={self.data_dir}", "--config.data.num_workers=1"]

  def run(self, args, module="hrm_jax.main", env=None, timeout=TIMEOUT_S):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          env=dict(self.env, **(env or {})), capture_output=True,
                          text=True, timeout=timeout, check=False)

  def start(self, args, log_path, env=None):
    log = open(log_path, "w")  # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, "-m", "hrm_jax.main", *args], cwd=REPO,
                            env=dict(self.env, **(env or {})), stdout=log,
                            stderr=subprocess.STDOUT)
    proc.log_file = log
    return proc


def _finish(proc, timeout=TIMEOUT_S) -> int:
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    pytest.fail(f"{proc.args} did not finish within {timeout} s")
  finally:
    proc.log_file.close()


def _message_lines(stderr: str) -> list[str]:
  """stderr minus absl's log records (I/W/E + date prefix) and their
  continuation lines: what the user is told."""
  lines = []
  in_record = False
  for line in stderr.splitlines():
    if re.match(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", line):
      in_record = True
      continue
    if in_record and line.startswith("  "):
      continue
    in_record = False
    if line.strip() and not line.startswith("[hrm_jax.data]"):
      lines.append(line)
  return lines


def _assert_message(proc, code, words, max_lines=2):
  out = proc.stdout + proc.stderr
  assert proc.returncode == code, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  lines = _message_lines(proc.stderr)
  assert 1 <= len(lines) <= max_lines, lines
  for word in words:
    assert word in proc.stderr, (word, lines)


def _checksum(text: str) -> str:
  found = CHECKSUM.findall(text)
  assert found, text[-3000:]
  return found[-1]


def _snapshot(workdir: pathlib.Path) -> dict:
  return {"config": (workdir / "config.json").read_bytes(),
          "dataset": (workdir / "dataset.json").read_bytes(),
          "steps": checkpoint.Checkpointer(workdir, every_steps=1).all_steps()}


def _assert_intact(workdir: pathlib.Path, snapshot: dict, resumed: bool = False):
  """config.json/dataset.json unchanged, the same checkpoints, solve answers.
  `resumed`: the command passed every check and resumed (with a longer
  total_steps), so config.json is the new run's."""
  now = _snapshot(workdir)
  if resumed:
    now["config"] = snapshot["config"]
    assert b'"total_steps": 6' in (workdir / "config.json").read_bytes()
  assert now == snapshot
  result = solve.run(workdir=str(workdir), sudoku=PUZZLE)
  assert result["checkpoint_step"] == snapshot["steps"][-1]
  assert len(result["solution"]) == 4


def _read_steps(workdir: pathlib.Path) -> list[int]:
  try:
    return [r["step"] for r in metric_writers.read_jsonl_metrics(workdir)
            if "train/loss" in r]
  except (OSError, ValueError):  # written while we read
    return []


def _wait_for(predicate, proc, timeout=TIMEOUT_S, poll=0.01):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll)
  pytest.fail(f"{proc.args}: condition not reached within {timeout} s")


def _restore_state(workdir: pathlib.Path):
  """(step, host TrainState) of the newest checkpoint, on one device."""
  config = sudoku.get_config("smoke")
  config.total_steps = REFERENCE_STEPS
  metadata, _ = workdir_lib.read_dataset_info(workdir)
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  program = steps.build_train_step(models.make_config(config.model, metadata), config.opt,
                                   config.total_steps, config.batch_size, mesh)
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1)
  try:
    step, state, carry, data_state = ckpt.restore_latest(program.abstract_state,
                                                         program.abstract_carry)
  finally:
    ckpt.close()
  return step, jax.device_get((state, carry)), data_state


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return Env(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def trained(env):
  """A 4-step smoke run (checkpoints 2 and 4), its snapshot and checksum."""
  workdir = env.root / "trained"
  proc = env.run([*env.smoke, f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Finished 4/4 steps" in proc.stderr
  env.first_run = proc  # its console is checked by test_console_of_a_first_run
  return workdir, _snapshot(workdir), _checksum(proc.stderr)


@pytest.fixture(scope="module")
def reference(env, trained):
  """The uninterrupted REFERENCE run: (workdir, checksum)."""
  del trained  # built the data and warmed the compilation cache
  workdir = env.root / "reference"
  proc = env.run([*env.smoke, *REFERENCE, f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, _checksum(proc.stderr)


def test_console_of_a_first_run(env, trained):
  """Issue 12, console: a first run (data built, pipes not a terminal) shows no
  TFDS banners or warnings and no progress-bar escape codes; it says when it
  compiles and ends on a summary with the commands for its workdir."""
  workdir = trained[0]
  proc = env.first_run
  out = proc.stdout + proc.stderr
  assert "[hrm_jax.data] building hrm_sudoku/" in out  # the build happened here
  for noise in ("Using custom data configuration", "Downloading and preparing",
                "has no dataset_info.json", "\x1b[", "examples/s]"):
    assert noise not in out, noise
  assert "Compiling the train step" in proc.stderr
  assert "Compiled the train step in" in proc.stderr
  tail = proc.stderr[proc.stderr.index("params checksum"):]
  for line in ("Finished 4/4 steps", "evaluation: step 4: exact_accuracy=",
               f"checkpoint: {workdir}/checkpoints/4",
               f"python -m hrm_jax.solve --workdir={workdir} --sudoku=",
               f"python -m hrm_jax.visualize --workdir={workdir}",
               f"tensorboard --logdir={workdir}/tensorboard"):
    assert line in tail, (line, tail)


def _raised(exc):
  """`exc` with a traceback from this test file (not hrm_jax)."""
  try:
    raise exc
  except BaseException as e:  # pylint: disable=broad-exception-caught
    return e


def test_error_map():
  """The one map from exceptions to messages and exit statuses (errors.py)."""
  import errno  # pylint: disable=import-outside-toplevel
  from hrm_jax.data import errors as data_errors  # pylint: disable=import-outside-toplevel
  full = errors.explain(OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"))
  assert full.exit_code == 1 and "No space left" in full.message
  assert "/w/metrics.jsonl" in full.message and "rerun the same command" in full.message
  tensorstore = errors.explain(ValueError(
      'RESOURCE_EXHAUSTED: Error writing "opt_state.mu/0.0" in OCDBT database at local '
      'file "/w/checkpoints/2.orbax-checkpoint-tmp/state/": Failed to write 13960 bytes '
      "to file 12: No space left on device [os_error_code='28']"))
  assert tensorstore.exit_code == 1 and "while writing /w/checkpoints." in tensorstore.message
  denied = errors.explain(PermissionError(errno.EACCES, "Permission denied", "/w"))
  assert denied.exit_code == 1 and "Permission denied for /w" in denied.message
  assert errors.explain(data_errors.DataError("train.csv row 3: bad")).exit_code == 1
  assert errors.explain(errors.UsageError("--config.x: no field")).exit_code == 2
  assert errors.explain(checkpoint.CheckpointMismatchError("shapes")).exit_code == 2
  assert errors.explain(checkpoint.CorruptCheckpointError("step 4")).exit_code == 1
  assert errors.explain(FloatingPointError("Non-finite loss")).exit_code == 1
  assert errors.explain(KeyboardInterrupt()).exit_code == 130
  # A plain ValueError is a config problem only when our code raised it; one
  # from elsewhere (a library, a builtin) or a KeyError keeps its traceback.
  assert errors.explain(ValueError("config.eval.batch_size=5 must divide")).exit_code == 2
  assert errors.explain(_raised(ValueError("range() arg 3 must not be zero"))) is None
  assert errors.explain(_raised(KeyError("x"))) is None


def test_usage_and_setup_errors_are_one_line_and_leave_nothing(env, trained):
  """Typos in the command, a cluster variable without its launcher, an
  unwritable workdir and bad data: status 2 (usage) or 1 (runtime), the
  problem and its fix in one or two lines, no traceback (unless asked for),
  and no workdir left behind. All started at once: they fail before training."""
  if os.geteuid() == 0:  # root writes through permission bits
    unwritable = pathlib.Path("/sys/hrm_jax_faults/run")
  else:
    locked = env.root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    unwritable = locked / "run"
  w = lambda name: f"--workdir={env.root / 'nothing' / name}"
  cases = {
      "missing_config_file": (["--config=experiments/nope.py", w("a")], {}, 2,
                              ["no experiment file 'experiments/nope.py'",
                               "experiments/sudoku.py"]),
      "unknown_variant": (["--config=experiments/sudoku.py:smok", w("b")], {}, 2,
                          ["Unknown config variant(s) ['smok']", "'smoke'"]),
      "typo_in_a_missing_sub_config": ([*env.smoke, w("c"), "--config.train.stepz=5"], {}, 2,
                                       ["no field 'train'", "did you mean",
                                        "--config.total_steps", "groups are"]),
      "slurm_without_srun": ([*env.smoke, w("e")], {"SLURM_JOB_ID": "42"}, 2,
                             ["SLURM_JOB_ID=42", "srun", "--distributed=off"]),
      "permission_denied": ([*env.smoke, f"--workdir={unwritable}"], {}, 1,
                            ["Permission denied", str(unwritable), "HRM_JAX_TRACEBACK=1"]),
      "bad_data": ([*env.smoke, w("f"), "--config.data.source=csv:/no/such/dir"], {}, 1,
                   ["CSV Sudoku sources are 9x9"]),
      # The traceback when asked for, with the same message last.
      "traceback_on_request": ([*env.smoke, w("g"), "--config.data.source=csv:/no/such/dir"],
                               {"HRM_JAX_TRACEBACK": "1"}, 1, None),
  }
  procs = {name: subprocess.Popen(
      [sys.executable, "-m", "hrm_jax.main", *args], cwd=REPO,
      env=dict(env.env, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, (args, extra, _, _) in cases.items()}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    _, _, code, words = cases[name]
    if words is None:
      assert proc.returncode == code
      assert "Traceback (most recent call last)" in stderr
      assert "hrm_jax.main: error: CSV Sudoku sources are 9x9" in stderr
      continue
    _assert_message(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
                    code, words)
  assert not (env.root / "nothing").exists()  # no empty workdir anywhere
  assert not unwritable.exists()


def test_help_lists_experiments_variants_and_overrides(env):
  proc = env.run(["--help"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  for word in ("experiments/sudoku.py", "experiments/maze.py", "experiments/arc.py",
               "variants: arc2, cpu, smoke", "variants: cpu, smoke", "--config.FIELD=VALUE",
               "WORKDIR/config.json", "~/hrm_jax_data"):
    assert word in proc.stdout, word


def test_failed_resume_keeps_the_run(env, trained):
  """Issue 12, item 2 (+ changed batch size or seed): resuming with another
  dataset, batch size or seed fails naming what changed and the ways out, and
  the good run's config.json/dataset.json and checkpoints stay as they were,
  so solve still answers from it."""
  workdir, snapshot, _ = trained
  cases = {
      "--config.data.board_size=6": "data.board_size: 4 -> 6",
      "--config.batch_size=32": "batch_size: 16 -> 32",
      "--config.seed=3": "seed: 0 -> 3",
  }
  procs = {arg: subprocess.Popen(
      [sys.executable, "-m", "hrm_jax.main", *env.smoke, f"--workdir={workdir}", arg],
      cwd=REPO, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for arg in cases}
  for arg, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    # One line of problem and fix, then the mismatching arrays (cut short).
    _assert_message(result, 2, [f"Cannot resume {workdir}", cases[arg],
                                "--config.init_from=", "config.json"],
                    max_lines=errors.MAX_LINES + 3)
    assert cases[arg] in _message_lines(stderr)[0]
  _assert_intact(workdir, snapshot)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_newest_checkpoint_is_refused_then_replaced(env, trained, tmp_path):
  """Issue 12, item 1: solve refuses a corrupt newest step loudly; the next
  training run moves it to checkpoints/corrupt/, resumes from step 2 and saves
  step 4 again, bit for bit what it was."""
  source, snapshot, checksum = trained
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
    if path.is_file():
      with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)

  proc = env.run([f"--workdir={workdir}", f"--sudoku={PUZZLE}"], module="hrm_jax.solve")
  _assert_message(proc, 1, ["step 4", "unreadable", "not falling back", "corrupt",
                            "resumes from step 2"], max_lines=1)

  proc = env.run([*env.smoke, f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Moved the unreadable checkpoint of step 4" in proc.stderr
  assert "Resumed from step 2" in proc.stderr
  assert "already exists; not saving" not in proc.stderr
  assert _checksum(proc.stderr) == checksum
  [moved] = (workdir / "checkpoints" / "corrupt").iterdir()
  assert moved.name.startswith("4-")
  _assert_intact(workdir, snapshot)


@pytest.mark.slow
def test_sigint_and_sigterm_save_and_resume_exactly(env, reference, tmp_path):
  """Ctrl-C: checkpoint at the next step, exit status 130; SIGTERM: the same,
  status 0 (a scheduler's preemption); rerunning ends bit for bit where the
  uninterrupted run ends (README: interrupting a run loses nothing)."""
  _, want = reference
  workdir = tmp_path / "run"
  args = [*env.smoke, *REFERENCE, f"--workdir={workdir}"]
  last = 0
  for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
    proc = env.start(args, tmp_path / f"{sig.name}.log")
    at = last + 5
    assert _wait_for(lambda: any(s >= at for s in _read_steps(workdir)), proc)
    proc.send_signal(sig)
    assert _finish(proc) == code, (tmp_path / f"{sig.name}.log").read_text()[-3000:]
    text = (tmp_path / f"{sig.name}.log").read_text()
    assert f"Received {sig.name}" in text and "rerun the same command to resume" in text
    saved = checkpoint.Checkpointer(workdir, every_steps=1).latest_step()
    assert at <= saved < REFERENCE_STEPS, saved
    assert max(_read_steps(workdir)) == saved  # nothing done after the save
    last = saved
  proc = env.run(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Resumed from step {last}" in proc.stderr
  assert _checksum(proc.stderr) == want


def test_second_ctrl_c_aborts_at_once(env):
  script = (
      "import os, signal, time\n"
      "from hrm_jax import preemption\n"
      "flag = preemption.install((signal.SIGTERM, signal.SIGINT))\n"
      "os.kill(os.getpid(), signal.SIGINT)\n"
      "deadline = time.time() + 10\n"
      "while not flag() and time.time() < deadline: time.sleep(0.01)\n"
      "print('stopping at the next step', flush=True)\n"
      "os.kill(os.getpid(), signal.SIGINT)\n"
      "time.sleep(10)\n"
      "print('still running', flush=True)\n")
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env.env,
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == -signal.SIGINT, proc.stdout + proc.stderr
  assert "stopping at the next step" in proc.stdout and "still running" not in proc.stdout
  assert "press Ctrl-C again to abort at once" in proc.stderr
  assert time.monotonic() - start < 9  # it did not wait out the sleep


def _children(pid: int) -> list[int]:
  out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                       text=True, check=False).stdout
  return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
  try:
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except (OSError, IndexError):
    return False
  return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_signal_during_data_generation_leaves_no_workers(env, tmp_path, sig):
  """Generator workers die with the trainer: SIGTERM stops them (and removes
  the half-built dataset, exit status 143); even SIGKILL, which runs no
  clean-up in the parent, leaves no worker behind."""
  data_dir, workdir = tmp_path / "data", tmp_path / "run"
  proc = env.start(["--config=experiments/sudoku.py:cpu", f"--config.data.data_dir={data_dir}",
                    "--config.data.train_size=100000", "--config.data.num_workers=2",
                    f"--workdir={workdir}"], tmp_path / "log")
  log = tmp_path / "log"
  assert _wait_for(lambda: "sudoku train:" in log.read_text(), proc, poll=0.1)
  workers = _children(proc.pid)
  assert len(workers) >= 2, workers  # the pool (and multiprocessing's resource tracker)
  proc.send_signal(sig)
  code = _finish(proc, timeout=60)
  deadline = time.monotonic() + 15
  while any(_alive(w) for w in workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not [w for w in workers if _alive(w)], "orphaned generator workers"
  assert not workdir.exists()
  if sig == signal.SIGTERM:
    assert code == 143, log.read_text()[-3000:]
    assert "received SIGTERM before training started" in log.read_text()
    assert not data_dir.exists() or not list(data_dir.rglob("*.array_record*"))
  else:
    assert code == -signal.SIGKILL


def _mount_namespace() -> list[str] | None:
  """`unshare` arguments giving this user a private mount namespace (where it
  may mount a tmpfs), or None where the system does not allow one."""
  if not shutil.which("unshare") or not sys.platform.startswith("linux"):
    return None
  prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
  probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                         capture_output=True, check=False)
  return prefix if probe.returncode == 0 else None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_during_a_save_is_one_message(env, trained, tmp_path):
  """A save on a full disk: one message naming the problem and the fix (not
  hundreds of lines of orbax and asyncio tracebacks), status 1, and the last
  complete checkpoint stays readable. The disk is a small tmpfs in a private
  mount namespace, filled to within 64 KiB: the metrics still fit, the
  checkpoint of step 6 does not."""
  prefix = _mount_namespace()
  if prefix is None:
    pytest.skip("needs a private mount namespace for a small tmpfs (unshare -m)")
  source, snapshot, _ = trained
  disk, out = tmp_path / "disk", tmp_path / "after"
  disk.mkdir()
  size_kib = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) // 1024 + 2048
  script = (f'mount -t tmpfs -o size={size_kib}k tmpfs "{disk}" && '
            f'cp -a "{source}" "{disk}/run" && '
            f'(dd if=/dev/zero of="{disk}/filler" bs=64k 2>/dev/null; true) && '
            f'truncate -s -64K "{disk}/filler" && '
            '"$@"; code=$?; '
            f'rm -f "{disk}/filler"; cp -a "{disk}/run" "{out}"; exit $code')
  args = [*env.smoke, f"--workdir={disk}/run", "--config.total_steps=6",
          "--config.ckpt.async_save=true"]
  proc = subprocess.run([*prefix, "sh", "-c", script, "sh", sys.executable, "-m",
                         "hrm_jax.main", *args], cwd=REPO, env=env.env, capture_output=True,
                        text=True, timeout=TIMEOUT_S, check=False)
  _assert_message(proc, 1, ["No space left on the device", f"{disk}/run/checkpoints",
                            "rerun the same command"])
  assert proc.stderr.count("\n") < 40, proc.stderr  # was 448 lines, 31 tracebacks
  assert checkpoint.Checkpointer(out, every_steps=1).all_steps() == snapshot["steps"]
  _assert_intact(out, snapshot, resumed=True)


@pytest.mark.slow
def test_kill_9_at_random_moments_ends_bitwise_equal(env, reference, tmp_path):
  """Acceptance of issue 12: SIGKILL after the first checkpoint, in the middle
  of a save (when one is caught being written) and at a random step, a resume
  after each, and the final state (parameters, optimiser, carry, data
  position) equals the uninterrupted run's bit for bit."""
  ref_dir, want = reference
  workdir = tmp_path / "run"
  args = [*env.smoke, *REFERENCE, f"--workdir={workdir}"]
  ckpt_dir = workdir / "checkpoints"
  rng = random.Random(12)

  def saving(floor):
    """A save of a step after `floor` being written: orbax writes it into
    <step>.orbax-checkpoint-tmp* and renames it when complete (an older
    run's leftover is removed when the manager opens, not counted)."""
    def now():
      if not ckpt_dir.is_dir():
        return False
      return any(".orbax-checkpoint-tmp" in p.name and int(p.name.split(".")[0]) > floor
                 for p in list(ckpt_dir.iterdir()))
    return now

  def has_step(step):
    return lambda: (ckpt_dir / str(step)).is_dir()

  killed = []
  for i, name in enumerate(["after the first checkpoint", "mid-save", "random step"]):
    floor = max(_read_steps(workdir) or [0])
    proc = env.start(args, tmp_path / f"kill_{i}.log")
    if name == "after the first checkpoint":
      when = has_step(20)
    elif name == "mid-save":
      when = saving(floor)
    else:
      at = floor + rng.randrange(3, 40)
      when = lambda at=at: any(s >= at for s in _read_steps(workdir))
    if _wait_for(when, proc, poll=0.002):
      proc.kill()
      killed.append(name)
    assert _finish(proc) in (-signal.SIGKILL, 0)
  assert "after the first checkpoint" in killed and "random step" in killed, killed
  print(f"killed: {killed}")
  proc = env.run(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _checksum(proc.stderr) == want
  (step, want_state, want_data), (got_step, got_state, got_data) = (
      _restore_state(ref_dir), _restore_state(workdir))
  assert step == got_step == REFERENCE_STEPS and got_data == want_data
  for a, b in zip(jax.tree.leaves(want_state), jax.tree.leaves(got_state)):
    np.testing.assert_array_equal(a, b)


# Issue 26: a long evaluation (many small batches of many segments) at steps 2 and 4.
LONG_EVAL = ["--config.total_steps=4", "--config.eval.every_steps=2",
             "--config.data.test_size=1000", "--config.eval.batch_size=4",
             "--config.eval.max_batches=-1", "--config.eval.halt_max_steps=48"]
_TIMING = ("eval/seconds", "eval/elapsed_s")


def _record(workdir: pathlib.Path) -> dict:
  """metrics.jsonl as {(step, key): value}, less wall times and rates."""
  out = {}
  for r in metric_writers.read_jsonl_metrics(workdir):
    for key, value in r.items():
      if key != "step" and key not in _TIMING and not key.startswith("perf/"):
        out[(r["step"], key)] = value
  return out


@pytest.mark.slow
def test_sigterm_during_an_evaluation_exits_at_once_and_resume_evaluates_it(env, trained,
                                                                            tmp_path):
  """Issue 26: the evaluation step is saved first; SIGTERM during its evaluation ends
  it at the next batch (exit 0 within seconds, the checkpoint of that step there);
  the rerun evaluates that step before training goes on, and the run's record
  (evaluations included) equals an uninterrupted run's."""
  del trained  # built the data and warmed the compilation cache
  reference = tmp_path / "reference"
  proc = env.run([*env.smoke, *LONG_EVAL, f"--workdir={reference}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  eval_seconds = [r["eval/seconds"] for r in metric_writers.read_jsonl_metrics(reference)
                  if "eval/seconds" in r]
  assert len(eval_seconds) == 2, eval_seconds  # the wall time is in the record

  workdir = tmp_path / "run"
  args = [*env.smoke, *LONG_EVAL, f"--workdir={workdir}"]
  log = tmp_path / "cut.log"
  proc = env.start(args, log)
  # Step 2 is saved, then evaluated (250 batches): the signal lands in that evaluation
  # (or just before its first batch, which polls too).
  saved = lambda: "Saving checkpoint of step 2" in log.read_text()
  assert _wait_for(saved, proc)
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  assert _finish(proc) == 0, log.read_text()[-3000:]
  assert time.monotonic() - sent < 15
  text = log.read_text()
  assert "its evaluation was cut short after" in text and "runs again on resume" in text
  assert "eval at step 2" not in text
  assert checkpoint.Checkpointer(workdir, every_steps=1).latest_step() == 2

  proc = env.run(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "The evaluation of step 2 did not finish" in proc.stderr
  assert proc.stderr.index("eval at step 2") < proc.stderr.index("step 3/4")
  assert _record(workdir) == _record(reference)


def test_a_small_evaluation_set_is_one_batch_of_its_own_size(env, trained, monkeypatch,
                                                             caplog):
  """Issue 26: 32 test puzzles with eval.batch_size 768 make one batch of 32 rows
  (rounded up to the devices only), not 768 rows of padding."""
  from hrm_jax import data as data_lib, evaluation  # pylint: disable=import-outside-toplevel
  del trained
  config = sudoku.get_config("smoke")
  config.data.data_dir = str(env.data_dir)
  config.data.num_workers = 1
  config.eval.batch_size = 768
  split = data_lib.load(config.data, "test")
  assert split.num_examples == 32
  assert evaluation.batch_size(split, config.eval, 1) == 32
  assert evaluation.batch_size(split, config.eval, 3) == 33
  mesh = sharding.make_mesh("data:1", jax.devices()[:1])
  shapes = []

  class Evaluator:  # records what the evaluation hands it
    needs_rows = False

    def reset(self):
      shapes.clear()

    def add(self, metric_sums, rows):
      del rows
      shapes.append(metric_sums["rows"])

    def result(self):
      return {"batches": len(shapes)}

  def eval_fn(weights, batch, rng):
    del weights, rng
    return {"rows": batch["inputs"].shape[0]}, None

  config.eval.max_batches = -1
  result = evaluation.evaluate(None, split, eval_fn, Evaluator(), config, mesh)
  assert shapes == [32] and result["batches"] == 1
  with pytest.raises(evaluation.EvaluationCut):
    evaluation.evaluate(None, split, eval_fn, Evaluator(), config, mesh,
                        should_stop=lambda: True)
  # A long evaluation shows progress (here: every batch past the first); a stop
  # signal after batch 3 cuts it at batch 3 of 8.
  config.eval.batch_size = 4
  monkeypatch.setattr(evaluation, "PROGRESS_EVERY_S", 0.0)
  polls = iter([False, False, False, True])
  with caplog.at_level(logging.INFO):
    with pytest.raises(evaluation.EvaluationCut) as cut:
      evaluation.evaluate(None, split, eval_fn, Evaluator(), config, mesh,
                          should_stop=lambda: next(polls), label="eval of step 7")
  assert (cut.value.done, cut.value.total) == (3, 8) and shapes == [4, 4, 4]
  progress = [r.getMessage() for r in caplog.records if "eval of step 7" in r.getMessage()]
  assert progress and progress[0].startswith("eval of step 7: batch 2/8 (4 rows each)")
