"""The real train_and_evaluate on every experiment's :smoke config: run, resume, stop."""
import importlib

import jax
import numpy as np
import pytest

from hrm_jax import checkpoint, data, metric_writers, schedule, train


def smoke_config(name, data_dir, variant="smoke", **overrides):
  config = importlib.import_module(f"experiments.{name}").get_config(variant)
  config.data.data_dir = str(data_dir)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("name,variant", [("sudoku", "smoke"), ("maze", "smoke"),
                                          ("arc", "smoke"), ("maze", "trm,smoke")])
def test_smoke_runs_and_resumes(name, variant, data_dir, tmp_path):
  config = smoke_config(name, data_dir, variant, total_steps=2, **{"eval.every_steps": 2})
  eval_metrics = train.train_and_evaluate(config, str(tmp_path)).eval_metrics
  assert eval_metrics, "evaluation produced no metrics"
  assert all(np.isfinite(v) for v in eval_metrics.values())
  assert checkpoint.Checkpointer(tmp_path, every_steps=2).latest_step() == 2
  records = metric_writers.read_jsonl_metrics(tmp_path)
  assert any("train/loss" in r for r in records)
  assert any(k.startswith("eval/") for r in records for k in r)
  # Resume: the same workdir with a longer run continues from step 2.
  config = smoke_config(name, data_dir, variant, total_steps=4, **{"eval.every_steps": 4})
  state = train.train_and_evaluate(config, str(tmp_path)).state
  assert int(state.step) == 4
  steps_logged = [r["step"] for r in metric_writers.read_jsonl_metrics(tmp_path)
                  if "train/loss" in r]
  assert steps_logged == [1, 2, 3, 4], steps_logged


@pytest.mark.parametrize("variant", ["smoke", "trm,smoke"])
def test_exact_resume_is_bitwise(variant, data_dir, tmp_path):
  """6 uninterrupted steps == 3 steps + restart + 3 steps, bit for bit (TRM: the
  EMA of the weights too)."""
  overrides = {"total_steps": 6, "eval.every_steps": 100, "ckpt.every_steps": 100,
               "model.halt_exploration_prob": 0.5}
  straight = train.train_and_evaluate(smoke_config("sudoku", data_dir, variant, **overrides),
                                      str(tmp_path / "a")).state
  train.train_and_evaluate(smoke_config("sudoku", data_dir, variant, stop_at_step=3,
                                        **overrides), str(tmp_path / "b"))
  assert checkpoint.Checkpointer(tmp_path / "b", every_steps=100).latest_step() == 3
  resumed = train.train_and_evaluate(smoke_config("sudoku", data_dir, variant, **overrides),
                                     str(tmp_path / "b")).state
  assert (straight.ema is not None) == (variant == "trm,smoke")
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)),
                  jax.tree.leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_with_the_step(data_dir, tmp_path):
  config = smoke_config("sudoku", data_dir, total_steps=4, **{"opt.lr": float("nan")})
  with pytest.raises(FloatingPointError, match=r"step \d"):
    train.train_and_evaluate(config, str(tmp_path))
  # Nothing non-finite was saved.
  assert checkpoint.Checkpointer(tmp_path, every_steps=2).latest_step() is None


def test_unknown_model_field_is_named(data_dir, tmp_path):
  config = smoke_config("sudoku", data_dir)
  config.model.hiden_size = 8
  with pytest.raises(ValueError, match="hiden_size"):
    train.train_and_evaluate(config, str(tmp_path))


def test_a_field_of_another_family_is_named_with_its_family():
  from hrm_jax import data, models  # pylint: disable=import-outside-toplevel
  shape = data.DatasetShape(6, 16, 1)
  hrm_fields = dict(models.default_fields("hrm"), mlp_t=True)
  with pytest.raises(ValueError, match=r"'mlp_t' \(a field of trm\).*'hrm' family"):
    models.make_config(hrm_fields, shape)
  trm_fields = dict(models.default_fields("trm"), one_step_gradient=False)
  with pytest.raises(ValueError, match=r"'one_step_gradient' \(a field of hrm\).*'trm'"):
    models.make_config(trm_fields, shape)
  with pytest.raises(ValueError, match="not a model family"):
    models.make_config({"arch": "lstm"}, shape)


def test_sigterm_saves_a_checkpoint_and_exits_zero(data_dir, tmp_path):
  """Preemption: SIGTERM mid-run -> checkpoint of the current step, exit status 0."""
  import os  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from hrm_jax import data  # pylint: disable=import-outside-toplevel
  config = smoke_config("sudoku", data_dir)
  data.load(config.data, "train"), data.load(config.data, "test")  # build before the child
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.Popen(
      [sys.executable, "-m", "hrm_jax.main", "--config=experiments/sudoku.py:smoke",
       f"--workdir={tmp_path}", f"--config.data.data_dir={data_dir}",
       "--config.total_steps=100000", "--config.ckpt.every_steps=100000",
       "--config.eval.every_steps=100000"], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  while time.time() < deadline and not metric_writers.read_jsonl_metrics(tmp_path)[1:]:
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out.decode()[-2000:]
  saved = checkpoint.Checkpointer(tmp_path, every_steps=100000).latest_step()
  assert saved is not None and saved >= 1
  assert b"SIGTERM" in out


@pytest.mark.parametrize("name", ["sudoku", "maze"])
def test_run_plan_of_the_paper_configs(name):
  """Sudoku-Extreme-1k / Maze-Hard-1k from the config alone (no data, no training):
  the reference's 10 iterations of 2000 epochs x 1000 groups at batch 768 make
  10 x 2604 = 26,040 updates, one evaluation after each iteration (never two at
  the same step), and an LR schedule of int(20000 * 1000 / 768) = 26,041 steps."""
  import importlib  # pylint: disable=import-outside-toplevel
  from hrm_jax import data  # pylint: disable=import-outside-toplevel
  from hrm_jax.data import sampler  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"experiments.{name}").get_config()
  metadata = data.DatasetMetadata(
      vocab_size=11, seq_len=81, num_puzzle_identifiers=1, pad_id=0, ignore_label_id=0,
      blank_identifier_id=0, total_groups=1000, mean_puzzle_examples=1.0)
  plan = schedule.plan_run(config, metadata, lambda i, epochs: sampler.iteration_batches(
      1000, epochs, config.batch_size))
  assert plan.total_steps == 26_040 and plan.schedule_steps == 26_041
  assert plan.eval_steps == tuple(2604 * k for k in range(1, 11))
  assert plan.epochs_per_iteration == 2000


@pytest.mark.parametrize("name", ["sudoku", "maze"])
def test_run_plan_of_the_trm_paper_configs(name):
  """`:trm` (the docstrings' counts): 50k epochs in 10 iterations of 5k hold
  10 x 6510 = 65,100 updates; the LR schedule is int(50000 * 1000 / 768) = 65,104."""
  import importlib  # pylint: disable=import-outside-toplevel
  from hrm_jax.data import sampler  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"experiments.{name}").get_config("trm")
  metadata = data.DatasetMetadata(
      vocab_size=11, seq_len=81, num_puzzle_identifiers=1, pad_id=0, ignore_label_id=0,
      blank_identifier_id=0, total_groups=1000, mean_puzzle_examples=1.0)
  plan = schedule.plan_run(config, metadata, lambda i, epochs: sampler.iteration_batches(
      1000, epochs, config.batch_size))
  assert plan.total_steps == 65_100 and plan.schedule_steps == 65_104
  assert plan.eval_steps == tuple(6510 * k for k in range(1, 11))
  assert plan.untrained_batches == 0


@pytest.mark.parametrize("variant", [None, "trm"])
def test_updates_stop_at_the_planned_total_when_the_iterations_hold_more(variant):
  """ARC-like: the iterations hold 0.2% more batches than the reference's planned
  total_steps = int(epochs * examples per epoch / batch); its train_batch makes no
  update past it, so neither does the run (the last evaluation is at the last update)."""
  from experiments import arc  # pylint: disable=import-outside-toplevel
  config = arc.get_config(variant)
  metadata = data.DatasetMetadata(
      vocab_size=12, seq_len=900, num_puzzle_identifiers=1001, pad_id=0, ignore_label_id=0,
      blank_identifier_id=0, total_groups=1000, mean_puzzle_examples=4.0)
  planned = int(config.epochs * 4000 / config.batch_size)  # 520,833 at 100k epochs
  per_iteration = int(planned / 10 * 1.002)  # 52,187 batches: 10 hold 521,870
  plan = schedule.plan_run(config, metadata, lambda i, epochs: per_iteration)
  assert planned == 520_833 and 10 * per_iteration == 521_870
  assert plan.total_steps == plan.schedule_steps == planned
  assert plan.untrained_batches == 10 * per_iteration - planned == 1037
  assert plan.eval_steps == (*(per_iteration * k for k in range(1, 10)), planned)
  # Fewer batches than planned (Sudoku/Maze): every batch is trained, as before.
  plan = schedule.plan_run(config, metadata, lambda i, epochs: per_iteration - 200)
  assert plan.total_steps == 10 * (per_iteration - 200) < plan.schedule_steps == planned
  assert plan.untrained_batches == 0
  # An every_steps override stops at the cap too.
  config.eval.every_steps = 200_000
  plan = schedule.plan_run(config, metadata, lambda i, epochs: per_iteration)
  assert plan.eval_steps == (200_000, 400_000, planned)


def test_run_plan_of_step_based_runs():
  from experiments import sudoku  # pylint: disable=import-outside-toplevel
  config = sudoku.get_config("cpu")
  metadata = data.DatasetMetadata(
      vocab_size=8, seq_len=36, num_puzzle_identifiers=1, pad_id=0, ignore_label_id=0,
      blank_identifier_id=0, total_groups=20_000, mean_puzzle_examples=1.0)
  plan = schedule.plan_run(config, metadata, None)
  assert plan.total_steps == plan.schedule_steps == 1600
  assert plan.eval_steps == (400, 800, 1200, 1600)
  config.total_steps, config.eval.every_steps = 10, 4
  assert schedule.plan_run(config, metadata, None).eval_steps == (4, 8, 10)
  config.total_steps, config.eval.every_steps = -1, -1
  config.epochs, config.eval.every_epochs = 1000, 300
  with pytest.raises(ValueError, match="multiple of config.eval.every_epochs"):
    schedule.plan_run(config, metadata, None)


def test_console_summary_profile_and_tensorboard(data_dir, tmp_path, caplog):
  """Issue 12, console and hooks: a line before the first compile (and its
  measured time after), a closing summary naming the last evaluation, the
  checkpoint and the commands for this workdir (after the checksum line, which
  the multi-process test reads), steps/s in the metrics, and
  config.profile_steps writing a jax.profiler trace into WORKDIR/profile."""
  config = smoke_config("sudoku", data_dir, total_steps=4, profile_steps=2,
                        **{"eval.every_steps": 4, "log_every_steps": 1})
  with caplog.at_level("INFO"):
    train.train_and_evaluate(config, str(tmp_path))
  text = caplog.text
  assert "Compiling the train step" in text and "Compiled the train step in" in text
  assert text.index("Compiling the train step") < text.index("step 1/4")
  assert "params checksum" in text
  summary = text[text.index("Finished 4/4 steps"):]
  assert text.index("params checksum") < text.index("Finished 4/4 steps")
  assert "evaluation: step 4: exact_accuracy=" in summary
  assert f"checkpoint: {tmp_path}/checkpoints/4" in summary
  assert f"python -m hrm_jax.solve --workdir={tmp_path} --sudoku=" in summary
  assert f"python -m hrm_jax.visualize --workdir={tmp_path}" in summary
  assert "Wrote a profiler trace of steps 2-3" in text
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  records = metric_writers.read_jsonl_metrics(tmp_path)
  rates = [r["perf/steps_per_s"] for r in records if "perf/steps_per_s" in r]
  assert len(rates) == 3 and all(r > 0 for r in rates)  # steps 2-4 (1 has no rate)
  assert all(r["perf/examples_per_s"] == pytest.approx(r["perf/steps_per_s"] * 16)
             for r in records if "perf/steps_per_s" in r)
