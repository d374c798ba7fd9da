"""train_and_evaluate: the whole run, top to bottom.

Phases: setup -> data -> model, optimizer and the compiled step -> restore ->
evaluators -> loop (train, log, evaluate, checkpoint) -> final save.

Resume order (first that applies):
  1. a checkpoint in WORKDIR/checkpoints: state, ACT carry and data position
     are restored, so the run continues exactly as if never stopped;
  2. `config.init_from` (another run's workdir, or a `convert` output): its
     weights only (parameters, or their EMA when it kept one; buffers; the
     puzzle table, re-initialised to the mean of the saved one when the new
     dataset has another number of puzzles, as the reference's
     `load_checkpoint`), with a fresh optimizer, carry and data position;
  3. a fresh start from `config.seed`.
"""
# pylint: disable=invalid-name
from __future__ import annotations

import dataclasses
import hashlib
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from hrm_jax import checkpoint, cpu_kind, data, errors, evaluation, memory_fit, metric_writers
from hrm_jax import metrics, models, preemption, sampling, schedule, sharding, steps
from hrm_jax import state as state_lib, tree_shapes, workdir as workdir_lib


@dataclasses.dataclass
class TrainResult:
  """What a finished (or stopped) run returns.

  Attributes:
    state: the final train state.
    eval_metrics: the last evaluation ({} if none ran).
    step: the step the run stopped at.
    stop_signal: the signal that stopped the run early (a checkpoint of `step`
      was saved), or None.
  """
  state: state_lib.TrainState
  eval_metrics: dict[str, float]
  step: int
  stop_signal: int | None = None


def _host_array(sharding_, value: np.ndarray) -> jax.Array:
  """A host array placed into a (possibly multi-process) sharding."""
  return jax.make_array_from_callback(value.shape, sharding_, lambda index: value[index])


def init_from(source: str, program: steps.TrainProgram,
              state: state_lib.TrainState) -> state_lib.TrainState:
  """Resume step 2: `state` with the weights of another workdir (see the module
  docstring); everything else (optimizer moments, step 0) stays fresh."""
  trained = workdir_lib.load_weights(source)
  saved = jax.device_get({"params": trained.weights.params,
                          "buffers": trained.weights.buffers})
  want = {"params": state.params, "buffers": state.buffers}
  problems = tree_shapes.mismatches(saved, want, "the saved weights", "this model")
  if problems:
    raise checkpoint.CheckpointMismatchError(
        f"config.init_from={source!r}: its weights do not fit this run's model:\n" +
        "\n".join(problems))
  sh = program.state_shardings
  params = jax.tree.map(lambda x, s, t: _host_array(s, np.asarray(x, t.dtype)),
                        saved["params"], sh.params, state.params)
  buffers = jax.tree.map(lambda x, s, t: _host_array(s, np.asarray(x).astype(t.dtype)),
                         saved["buffers"], sh.buffers, state.buffers)
  table = np.asarray(jax.device_get(trained.weights.puzzle_emb), np.float32)
  want_rows, want_width = state.puzzle_emb.shape
  if table.shape[1] != want_width:
    raise checkpoint.CheckpointMismatchError(
        f"config.init_from={source!r}: puzzle embeddings of width {table.shape[1]}, this "
        f"model's are {want_width} (config.model.puzzle_emb_ndim).")
  if table.shape[0] != want_rows:
    logging.warning("init_from %s: its puzzle table has %d rows, this dataset %d puzzle "
                    "ids: every row starts at the mean of the saved table.", source,
                    table.shape[0], want_rows)
    table = np.broadcast_to(table.mean(axis=0, keepdims=True), (want_rows, want_width))
  logging.info("Initialised from %s (step %d).", source, trained.step)
  return state.replace(
      params=params, buffers=buffers,
      puzzle_emb=_host_array(sh.puzzle_emb, np.ascontiguousarray(table)),
      ema=None if state.ema is None else jax.tree.map(lambda p: p.copy(), params))


def _compiled_program(config, model_cfg, plan, mesh, loop_rng):
  """The train program, its step compiled ahead of time (the loop's first call reuses
  the executable) and, unless `config.auto_accumulate` is off, with as many
  micro-batches as this device's memory needs (`memory_fit`)."""
  build = lambda k: steps.build_train_step(model_cfg, config.opt, plan.schedule_steps,
                                           config.batch_size, mesh, ema_rate=config.ema_rate,
                                           grad_accum_steps=k)
  lower_args = lambda program: (*program.abstract_args()[:3], loop_rng)
  budget, where = (None, "")
  if config.auto_accumulate:
    budget, where = memory_fit.available_bytes()
    budget = memory_fit.agreed_budget(budget)
  logging.info("Compiling the train step (tens of seconds for a small model on a CPU, "
               "minutes for the paper's).")
  t0 = time.perf_counter()
  program, _, peak = memory_fit.fit(build, lower_args, config.grad_accum_steps,
                                    config.batch_size // mesh.devices.size, budget, where)
  logging.info("Compiled the train step in %.1f s%s.", time.perf_counter() - t0,
               f" (XLA's peak per device: {peak / (1 << 30):.2f} GiB)" if peak else "")
  if program.grad_accum_steps != config.grad_accum_steps:
    with config.unlocked():
      config.grad_accum_steps = program.grad_accum_steps
  return program


class _NonFinite(FloatingPointError):
  pass


def _check_finite(host: dict[str, float], step: int, ckpt: checkpoint.Checkpointer):
  # A finite loss can still come with a non-finite gradient, whose update
  # poisons the state: check both before any checkpoint holds this step.
  if np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"]):
    return
  last = ckpt.latest_step()
  kept = (f"The last good checkpoint (step {last}) in {ckpt.directory} is kept"
          if last is not None else "No checkpoint was written yet")
  parts = {k: float(v) for k, v in host.items() if k.endswith(("loss", "norm"))}
  raise _NonFinite(
      f"Non-finite training loss or gradient at step {step} ({parts}); stopping. {kept}: "
      "lower config.opt.lr or use float32 (config.model.forward_dtype) and resume.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains (resuming if WORKDIR has a checkpoint); returns the final state and
  the last evaluation."""
  # ---- Setup.
  run_start = time.perf_counter()
  # Created at the restore phase, once the data and the model are ready: a
  # run that fails before leaves no empty directory behind.
  workdir = checkpoint.absolute(workdir)
  if config.get("enable_x64", False) and not jax.config.jax_enable_x64:
    raise ValueError("config.enable_x64=True needs 64-bit JAX from the start: run "
                     "through `python -m hrm_jax.main` (it turns it on) or set "
                     "JAX_ENABLE_X64=1.")
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divides(config.batch_size, mesh)
  if config.eval.batch_size % mesh.devices.size:
    raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must divide by "
                     f"the {mesh.devices.size} devices.")

  # ---- Data.
  train_split = data.load(config.data, "train")
  test_split = data.load(config.data, "test")
  metadata = train_split.metadata
  plan = schedule.plan_for_split(config, train_split)
  total_steps, eval_steps = plan.total_steps, set(plan.eval_steps)
  sampler = data.TrainSampler(train_split, config.batch_size, config.seed,
                              jax.process_index(), jax.process_count(),
                              epochs_per_iteration=plan.epochs_per_iteration)

  # ---- Model, optimizer and the compiled step. A resumed CPU recipe keeps the
  # dtype it started in when only the CPU kind's automatic choice differs.
  if (workdir / workdir_lib.CONFIG_FILE).exists():
    dtype, message = cpu_kind.resume_dtype(workdir_lib.read_config(workdir), config)
    if message:
      logging.info(message)
      config.model.forward_dtype = dtype
  model_cfg = models.make_config(config.model, metadata)
  init_rng, loop_rng = jax.random.split(jax.random.key(config.seed))
  program = _compiled_program(config, model_cfg, plan, mesh, loop_rng)
  state = program.init_state(init_rng)
  carry = program.init_carry()

  # ---- Restore (the order is the module docstring's).
  workdir.mkdir(parents=True, exist_ok=True)
  try:
    ckpt = checkpoint.Checkpointer(workdir, every_steps=config.ckpt.every_steps,
                                   max_to_keep=config.ckpt.max_to_keep,
                                   async_save=config.ckpt.async_save)
  except (OSError, ValueError):
    raise
  except Exception as e:  # orbax's own types: one line, naming the directory
    raise workdir_lib.WorkdirError(
        f"Orbax could not open {workdir / checkpoint.CHECKPOINT_DIR}: {type(e).__name__}: "
        f"{errors.first_line(e)}. Check that the workdir is a "
        "directory this process can write (gs:// needs GCS credentials).") from e
  try:
    restored = ckpt.restore_latest(program.abstract_state, program.abstract_carry)
    if restored is not None:
      sampler.set_state(restored[3])
  except checkpoint.WeightsOnlyError:
    ckpt.close()
    raise
  except ValueError as e:  # shapes (CheckpointMismatchError) or the sampler's seed/batch
    ckpt.close()
    raise workdir_lib.explain_resume_mismatch(e, workdir, config) from e
  if restored is not None:
    step, state, restored_carry, data_state = restored
    carry = carry if restored_carry is None else restored_carry
    logging.info("Resumed from step %d.", step)
  elif config.get("init_from", ""):
    state = init_from(config.init_from, program, state)
  step = int(jax.device_get(state.step))
  if jax.process_index() == 0:  # every check passed: solve/visualize can use the run
    workdir_lib.write_config(workdir, config)
    workdir_lib.write_dataset_info(workdir, test_split.metadata, test_split.identifiers)

  # ---- Evaluators.
  eval_fn, evaluator = evaluation.build(config, program.model, test_split, workdir)

  writer = metric_writers.writers_for_process(workdir, jax.process_index())
  progress = metric_writers.ProgressReporter(total_steps, config.batch_size,
                                             loss_key="train/loss",
                                             accuracy_key="train/accuracy")
  stop_flag = preemption.install()
  num_params = models.count_params(state.params)
  logging.info("%s: %s parameters (+ puzzle embedding %s); %d processes, %d devices, "
               "mesh %s; global batch %d (%d per process); %d steps, %d evaluations "
               "(first at step %d).", model_cfg.ARCH.upper(), f"{num_params:,}",
               state.puzzle_emb.shape, jax.process_count(), jax.device_count(),
               dict(mesh.shape), config.batch_size, config.batch_size // jax.process_count(),
               total_steps, len(eval_steps), min(eval_steps))
  if step == 0:
    writer.write_scalars(0, {"num_params": num_params, "total_steps": total_steps})
  writer.write_hparams(metric_writers.flatten_config(config))
  profiler = _Profiler(workdir, config.get("profile_steps", 0))

  # ---- Loop.
  sums = metrics.Sums()
  last_eval: dict[str, float] = {}
  last_eval_step = None
  pending = None  # (step, device metrics) fetched after the next step is dispatched

  def absorb():
    nonlocal pending
    if pending is not None:
      pending_step, device_metrics = pending
      host = jax.device_get(device_metrics)
      _check_finite(host, pending_step, ckpt)
      sums.add(host)
      pending = None

  def evaluate_step(at: int) -> str | None:
    """Evaluates the state of step `at` (already saved); the stop reason if a stop
    signal cut the evaluation short, else None."""
    nonlocal last_eval, last_eval_step
    # Several processes: JAX's preemption protocol counts train steps, so a notice is
    # acted on at the next step; the checkpoint of this one exists already, and a
    # kill during the evaluation loses nothing (it is owed on resume).
    should_stop = stop_flag if jax.process_count() == 1 else None
    t0 = time.perf_counter()
    try:
      result = evaluation.evaluate(state.eval_weights(), test_split, eval_fn, evaluator,
                                   config, mesh, should_stop=should_stop,
                                   label=f"eval of step {at}", step=at)
    except evaluation.EvaluationCut as cut:
      why = _stop_reason(stop_flag, at, config, ckpt) or "preemption notice"
      return (f"{why}; its evaluation was cut short after {cut.done}/{cut.total} "
              "batches and runs again on resume")
    last_eval, last_eval_step = result, at
    scalars = {f"eval/{k}": v for k, v in result.items()}
    scalars["eval/seconds"] = seconds = time.perf_counter() - t0
    # Seconds since this process started the run: time-to-accuracy benchmarks.
    scalars["eval/elapsed_s"] = time.perf_counter() - run_start
    writer.write_scalars(at, scalars)
    writer.flush()
    logging.info("eval at step %d (%.1fs): %s", at, seconds,
                 metric_writers.format_scalars(at, result))
    return None

  stop = None
  say_cpu_time = bool(config.cpu_variant) and _on_cpu()  # after the first step
  try:
    if restored is not None and evaluation.pending_step(workdir, step, eval_steps):
      logging.info("The evaluation of step %d did not finish before the run stopped; "
                   "running it before training goes on.", step)
      stop = evaluate_step(step)
    while stop is None and step < total_steps:
      host_batch = next(sampler)
      first_step_start = time.perf_counter()
      state, carry, step_metrics = program.step(
          state, carry, sharding.global_batch(host_batch, mesh), loop_rng)
      step += 1
      absorb()
      pending = (step, step_metrics)
      if say_cpu_time:
        jax.block_until_ready(step_metrics)
        _paper_scale_on_cpu(config, time.perf_counter() - first_step_start,
                            total_steps - step)
        say_cpu_time = False

      is_last = step == total_steps
      if step % config.log_every_steps == 0 or is_last:
        absorb()
        scalars = {f"train/{k}": v for k, v in sums.train_result(config.batch_size).items()}
        scalars["train/epoch"] = sampler.epoch
        # Logs the progress line; its rate (data, evals and saves included) also
        # goes to TensorBoard.
        progress.report(step, scalars, log=jax.process_index() == 0)
        if progress.steps_per_sec is not None:
          scalars["perf/steps_per_s"] = progress.steps_per_sec
          scalars["perf/examples_per_s"] = progress.steps_per_sec * config.batch_size
        writer.write_scalars(step, scalars)
        writer.flush()
        sums = metrics.Sums()
        profiler.after_log(step)
      profiler.after_step(step, state)

      # An evaluation step is saved first: a stop during its evaluation then leaves
      # at once, and the resumed run evaluates that very state.
      evaluating = step in eval_steps
      stop = _stop_reason(stop_flag, step, config, ckpt)
      if ckpt.due(step) or stop or is_last or evaluating:
        absorb()  # never save a state whose loss we have not checked
        ckpt.save(step, state, carry, sampler.get_state(), config,
                  force=bool(stop) or is_last or evaluating)
      if evaluating and not stop:
        stop = evaluate_step(step)
    if stop:
      logging.warning("Stopping at step %d (%s): checkpoint saved; rerun the same "
                      "command to resume.", step, stop)
  finally:
    profiler.close()
    ckpt.close()
    writer.close()
    stop_flag.uninstall()
  logging.info("Final params checksum (process %d): %s", jax.process_index(),
               params_checksum(state.params))
  stop_signal = stop_flag.signal if stop and stop_flag() else None
  if jax.process_index() == 0:
    logging.info("%s", closing_summary(
        config, workdir, step, total_steps, last_eval, last_eval_step,
        ckpt.latest_step(), stop, time.perf_counter() - run_start))
  return TrainResult(state=state, eval_metrics=last_eval, step=step,
                     stop_signal=stop_signal)


# The metrics the closing summary shows first, when the evaluator reports them.
_HEADLINE = ("exact_accuracy", "accuracy", "loss", "steps", "arc/pass@2", "arc/aggregated/pass@2")


def closing_summary(config, workdir, step: int, total_steps: int,
                    last_eval: dict[str, float], last_eval_step: int | None,
                    saved_step: int | None, stop: str | None, seconds: float) -> str:
  """The lines a run ends on: how it ended, its last evaluation, its checkpoint,
  and the commands that use it."""
  took = metric_writers.format_duration(seconds)
  head = (f"Stopped at step {step}/{total_steps} ({stop}) after {took}; rerun the same "
          "command to resume." if stop else f"Finished {step}/{total_steps} steps in {took}.")
  lines = [head, f"  workdir:    {workdir}"]
  if last_eval:
    shown = [k for k in _HEADLINE if k in last_eval]
    shown += sorted(k for k in last_eval if k not in shown and "/" in k)[:6]
    lines.append(f"  evaluation: step {last_eval_step}: " + ", ".join(
        f"{k}={float(last_eval[k]):.4g}" for k in shown))
  if saved_step is not None:
    lines.append(f"  checkpoint: {workdir / checkpoint.CHECKPOINT_DIR / str(saved_step)}")
  family = str(config.data.family)
  puzzle = {"sudoku": "--sudoku=CELLS", "maze": "--maze=MAZE.txt",
            "arc": "--arc=TASK.json"}.get(family, "--sudoku=CELLS")
  lines += [f"  solve:      python -m hrm_jax.solve --workdir={workdir} {puzzle}",
            f"  pictures:   python -m hrm_jax.visualize --workdir={workdir}",
            f"  curves:     tensorboard --logdir={workdir / metric_writers.TENSORBOARD_DIR}"]
  return "\n".join(lines)


class _Profiler:
  """`config.profile_steps` > 0: a `jax.profiler` trace of that many steps,
  started after the first progress line (compilation and warm-up are over),
  written to WORKDIR/profile (process 0; TensorBoard's profile tab or Perfetto
  read it)."""

  def __init__(self, workdir, num_steps: int):
    self._dir = workdir / "profile"
    self._num_steps = int(num_steps) if jax.process_index() == 0 else 0
    self._first = self._until = None  # steps of the trace, once started

  def after_log(self, step: int) -> None:
    if self._num_steps > 0 and self._first is None:
      jax.profiler.start_trace(str(self._dir))
      self._first, self._until = step + 1, step + self._num_steps

  def after_step(self, step: int, state) -> None:
    if self._until is not None and step >= self._until:
      jax.block_until_ready(state)  # the traced steps' device work included
      self.close()
      logging.info("Wrote a profiler trace of steps %d-%d to %s.", self._first, step,
                   self._dir)

  def close(self) -> None:
    if self._until is not None:
      jax.profiler.stop_trace()
      self._until = None  # one trace a run


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def _paper_scale_on_cpu(config, first_step_s: float, steps_left: int) -> None:
  """The one line a paper-scale config on a CPU gets: its time to the end at the
  first step's rate, and the variant made for a CPU (the run goes on)."""
  logging.warning(
      "This is a paper-scale config on a CPU: its first step took %s, so the %d steps "
      "left would take ~%s (evaluations not counted). --config=%s learns in minutes on "
      "a CPU; this run goes on (Ctrl-C saves and stops it).",
      metric_writers.format_duration(first_step_s), steps_left,
      metric_writers.format_duration(first_step_s * steps_left), config.cpu_variant)


def _stop_reason(stop_flag, step: int, config, ckpt) -> str | None:
  """Why the run stops after this step (None: it goes on)."""
  if stop_flag():
    return f"received {signal.Signals(stop_flag.signal).name}"
  if step == config.get("stop_at_step", -1):
    return "config.stop_at_step"
  if jax.process_count() > 1 and ckpt.reached_preemption(step):
    return "preemption notice: every process agreed to save at this step"
  return None


def params_checksum(params) -> str:
  """sha256 over this process's own shards: equal on every process of a healthy run."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    for shard in sorted(leaf.addressable_shards, key=lambda s: str(s.index)):
      digest.update(np.ascontiguousarray(np.asarray(shard.data)).tobytes())
  return digest.hexdigest()[:16]
