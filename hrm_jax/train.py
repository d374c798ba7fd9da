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
import importlib
import signal
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from hrm_jax import checkpoint, data, metric_writers, metrics, models, preemption, sampling
from hrm_jax import sharding, state as state_lib, steps, workdir as workdir_lib


@dataclasses.dataclass
class TrainResult:
  """What a finished (or stopped) run returns."""
  state: state_lib.TrainState
  eval_metrics: dict[str, float]
  step: int


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """How long a run is and when it evaluates; the one place epochs become steps.

  Attributes:
    total_steps: optimizer updates the run makes.
    schedule_steps: length of the LR schedules. Epoch-based runs use the
      reference's `int(epochs * examples_per_epoch / global_batch)`, which can
      exceed the updates made (Sudoku-1k: 26,041 vs 26,040) exactly as there.
    eval_steps: the steps after which the run evaluates (sorted, distinct; the
      last is total_steps).
    epochs_per_iteration: the sampler's iteration length in epochs.
  """
  total_steps: int
  schedule_steps: int
  eval_steps: tuple[int, ...]
  epochs_per_iteration: int


# Step-based runs: an iteration (whose last partial batch is dropped) holds at
# least this many batches, so at most ~1% of the examples are skipped.
MIN_BATCHES_PER_ITERATION = 100


def examples_per_epoch(metadata) -> float:
  """Reference: one epoch = total_groups * mean_puzzle_examples examples."""
  return metadata.total_groups * metadata.mean_puzzle_examples


def plan_run(config: ml_collections.ConfigDict, metadata,
             batches_in_iteration: Callable[[int, int], int]) -> RunPlan:
  """The run's length and evaluation points (see `RunPlan`).

  Epoch-based runs (`config.total_steps <= 0`) are planned as the reference
  plans them: `epochs / eval.every_epochs` iterations of `eval.every_epochs`
  epochs each, an evaluation after every iteration, and as many updates as the
  iterations hold (each drops only its last partial batch). Step-based runs
  (`config.total_steps > 0`, the CPU recipes) make exactly that many updates,
  evaluate every `eval.every_steps` and after the last step, and stream in
  iterations of the fewest epochs that hold `MIN_BATCHES_PER_ITERATION`
  batches: a function of the data and the batch only, so a run resumed with a
  longer `total_steps` or another evaluation interval continues the same stream.

  Args:
    config: the run config.
    metadata: the train split's DatasetMetadata.
    batches_in_iteration: `(iteration, epochs_per_iteration) -> batches`, the
      sampler's exact count.
  """
  B = config.batch_size
  per_epoch = examples_per_epoch(metadata)
  if config.total_steps > 0:
    total = int(config.total_steps)
    every = (config.eval.every_steps if config.eval.every_steps > 0
             else int(config.eval.every_epochs * per_epoch / B))
    every = max(1, min(every, total))
    evals = sorted(set(range(every, total + 1, every)) | {total})
    epochs_per_iteration = max(1, -(-MIN_BATCHES_PER_ITERATION * B // max(1, int(per_epoch))))
    return RunPlan(total, total, tuple(evals), epochs_per_iteration)
  epochs, interval = int(config.epochs), int(config.eval.every_epochs)
  if interval < 1 or epochs < interval or epochs % interval:
    raise ValueError(f"config.epochs={epochs} must be a multiple of "
                     f"config.eval.every_epochs={interval} (the reference's eval_interval), "
                     "or set config.total_steps and config.eval.every_steps.")
  boundaries = np.cumsum([batches_in_iteration(i, interval)
                          for i in range(epochs // interval)]).tolist()
  if boundaries[-1] < 1:
    raise ValueError(f"The run has no updates: {epochs} epochs of {per_epoch:g} examples "
                     f"do not fill one batch of {B}.")
  evals = tuple(sorted(set(b for b in boundaries if b > 0)))
  if config.eval.every_steps > 0:
    evals = tuple(sorted(set(range(config.eval.every_steps, boundaries[-1] + 1,
                                   config.eval.every_steps)) | {boundaries[-1]}))
  return RunPlan(int(boundaries[-1]), max(1, int(epochs * per_epoch / B)), evals,
                 interval)


def load_evaluator(eval_cfg, split, workdir):
  """Evaluators are plug-ins: hrm_jax.evaluators.<type>.Evaluator."""
  try:
    module = importlib.import_module(f"hrm_jax.evaluators.{eval_cfg.type}")
  except ModuleNotFoundError as e:
    raise ValueError(f"config.eval.type={eval_cfg.type!r} has no module "
                     f"hrm_jax.evaluators.{eval_cfg.type}.") from e
  return module.Evaluator(split=split, eval_cfg=eval_cfg, workdir=workdir)


def evaluate(weights, split, eval_fn, evaluator, config, mesh) -> dict[str, float]:
  """Runs the evaluator over the test split (or its first max_batches).

  Batch i's sampling noise comes from `config.eval.sample_seed` folded with i (the
  same on every process). When the evaluator needs rows and the evaluation checks
  answers (`sampling.uses_checker`), the family's rule check of every candidate
  is added to them as `sample_accepted` [B, K] (host-side, numpy).
  """
  evaluator.reset()
  eval_cfg = config.eval
  check = data.family(config.data.family).check_answer
  run_checker = check is not None and sampling.uses_checker(
      eval_cfg.get("num_samples", 1), eval_cfg.get("select", "q_halt"))
  sample_key = jax.random.key(eval_cfg.get("sample_seed", 0))
  batches: Iterator = data.eval_batches(split, config.eval.batch_size,
                                        jax.process_index(), jax.process_count())
  for i, host_batch in enumerate(batches):
    if 0 <= config.eval.max_batches <= i:
      break
    example_index = host_batch.pop("example_index")
    metric_sums, row_outputs = eval_fn(weights, sharding.global_batch(host_batch, mesh),
                                       jax.random.fold_in(sample_key, i))
    rows = None
    if evaluator.needs_rows:
      rows = sharding.to_host(row_outputs)
      rows["example_index"] = np.asarray(sharding.to_host(example_index))
      for key in ("puzzle_identifiers", "inputs", "labels"):
        rows[key] = np.asarray(sharding.to_host(host_batch[key]))
      if run_checker:
        rows["sample_accepted"] = sampling.accepted(
            check, rows["inputs"], sampling.candidates(rows)[0])
    evaluator.add(jax.device_get(metric_sums), rows)
  return evaluator.result()


def _plan(config, train_split) -> RunPlan:
  counts = {}

  def batches_in_iteration(iteration: int, epochs_per_iteration: int) -> int:
    if epochs_per_iteration not in counts:  # one sampler per iteration length
      counts[epochs_per_iteration] = data.TrainSampler(
          train_split, config.batch_size, config.seed,
          epochs_per_iteration=epochs_per_iteration)
    return counts[epochs_per_iteration].batches_in_iteration(iteration)

  return plan_run(config, train_split.metadata, batches_in_iteration)


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
  problems = checkpoint.diff_shapes(checkpoint.flat_shapes(saved),
                                    checkpoint.flat_shapes(want))
  if problems:
    raise checkpoint.CheckpointMismatchError(
        f"config.init_from={source!r}: its weights do not fit this run's model:\n" +
        "\n".join(f"  {p}: saved {h} != this model {w}" for p, h, w in problems))
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
  workdir = checkpoint.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
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
  plan = _plan(config, train_split)
  total_steps, eval_steps = plan.total_steps, set(plan.eval_steps)
  sampler = data.TrainSampler(train_split, config.batch_size, config.seed,
                              jax.process_index(), jax.process_count(),
                              epochs_per_iteration=plan.epochs_per_iteration)

  # ---- Model, optimizer and the compiled step.
  model_cfg = models.make_config(config.model, metadata)
  program = steps.build_train_step(model_cfg, config.opt, plan.schedule_steps,
                                   config.batch_size, mesh,
                                   ema_rate=config.get("ema_rate", 0.0))
  init_rng, loop_rng = jax.random.split(jax.random.key(config.seed))
  state = program.init_state(init_rng)
  carry = program.init_carry()

  # ---- Restore (the order is the module docstring's).
  ckpt = checkpoint.Checkpointer(workdir, every_steps=config.ckpt.every_steps,
                                 max_to_keep=config.ckpt.max_to_keep,
                                 async_save=config.ckpt.async_save)
  restored = ckpt.restore_latest(program.abstract_state, program.abstract_carry)
  if restored is not None:
    step, state, restored_carry, data_state = restored
    carry = carry if restored_carry is None else restored_carry
    sampler.set_state(data_state)
    logging.info("Resumed from step %d.", step)
  elif config.get("init_from", ""):
    state = init_from(config.init_from, program, state)
  step = int(jax.device_get(state.step))
  if jax.process_index() == 0:  # every check passed: solve/visualize can use the run
    workdir_lib.write_config(workdir, config)
    workdir_lib.write_dataset_info(workdir, test_split.metadata, test_split.identifiers)

  # ---- Evaluators.
  eval_halt_steps = (config.eval.halt_max_steps if config.eval.halt_max_steps > 0
                     else model_cfg.halt_max_steps)
  sampling.check_family(config.eval.get("select", "q_halt"), config.data.family,
                        data.family(config.data.family).check_answer)
  eval_fn = steps.build_eval_step(program.model, eval_halt_steps,
                                  config.eval.adaptive_halting,
                                  num_samples=config.eval.get("num_samples", 1),
                                  latent_noise=config.eval.get("latent_noise", 0.0),
                                  select=config.eval.get("select", "q_halt"))
  evaluator = load_evaluator(config.eval, test_split, workdir)

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

  # ---- Loop.
  sums = metrics.Sums()
  last_eval: dict[str, float] = {}
  pending = None  # (step, device metrics) fetched after the next step is dispatched

  def absorb():
    nonlocal pending
    if pending is not None:
      pending_step, device_metrics = pending
      host = jax.device_get(device_metrics)
      _check_finite(host, pending_step, ckpt)
      sums.add(host)
      pending = None

  try:
    while step < total_steps:
      host_batch = next(sampler)
      state, carry, step_metrics = program.step(
          state, carry, sharding.global_batch(host_batch, mesh), loop_rng)
      step += 1
      absorb()
      pending = (step, step_metrics)

      is_last = step == total_steps
      if step % config.log_every_steps == 0 or is_last:
        absorb()
        scalars = {f"train/{k}": v for k, v in sums.train_result(config.batch_size).items()}
        scalars["train/epoch"] = sampler.epoch
        writer.write_scalars(step, scalars)
        writer.flush()
        if jax.process_index() == 0:
          progress.report(step, scalars)  # logs the progress line
        sums = metrics.Sums()

      if step in eval_steps:
        t0 = time.perf_counter()
        last_eval = evaluate(state.eval_weights(), test_split, eval_fn, evaluator,
                             config, mesh)
        scalars = {f"eval/{k}": v for k, v in last_eval.items()}
        # Seconds since this process started the run: time-to-accuracy benchmarks.
        scalars["eval/elapsed_s"] = time.perf_counter() - run_start
        writer.write_scalars(step, scalars)
        writer.flush()
        logging.info("eval at step %d (%.1fs): %s", step, time.perf_counter() - t0,
                     metric_writers.format_scalars(step, last_eval))

      stop = _stop_reason(stop_flag, step, config, ckpt)
      if ckpt.due(step) or stop or is_last:
        absorb()  # never save a state whose loss we have not checked
        ckpt.save(step, state, carry, sampler.get_state(), config,
                  force=bool(stop) or is_last)
      if stop:
        logging.warning("Stopping at step %d (%s): checkpoint saved; rerun the same "
                        "command to resume.", step, stop)
        break
  finally:
    ckpt.close()
    writer.close()
    stop_flag.uninstall()
  logging.info("Final params checksum (process %d): %s", jax.process_index(),
               params_checksum(state.params))
  return TrainResult(state=state, eval_metrics=last_eval, step=step)


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
