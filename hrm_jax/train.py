"""train_and_evaluate: the whole run, top to bottom.

Phases: setup -> data -> model & optimizer -> shard & init -> restore ->
evaluators -> loop (train, log, evaluate, checkpoint) -> final save.

Resume order (first that applies):
  1. a checkpoint in WORKDIR/checkpoints: state, ACT carry and data position
     are restored, so the run continues exactly as if never stopped;
  2. otherwise a fresh start from `config.seed`.
"""
# pylint: disable=invalid-name
import functools
import hashlib
import importlib
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from hrm_jax import checkpoint, metric_writers, sharding, state as state_lib, steps
from hrm_jax import data
from hrm_jax.models import hrm

MODEL_FIELDS = (
    "puzzle_emb_ndim", "H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size",
    "expansion", "num_heads", "pos_encodings", "rms_norm_eps", "rope_theta",
    "halt_max_steps", "halt_exploration_prob", "forward_dtype", "loss_type", "scan",
    "one_step_gradient", "attention_impl")


def model_config(config: ml_collections.ConfigDict,
                 metadata: "data.DatasetMetadata") -> hrm.HRMConfig:
  """HRMConfig from config.model plus the dataset's vocab, length and ids."""
  unknown = set(config.model.keys()) - set(MODEL_FIELDS)
  if unknown:
    raise ValueError(f"config.model has unknown fields {sorted(unknown)}; "
                     f"known: {sorted(MODEL_FIELDS)}.")
  return hrm.HRMConfig(seq_len=metadata.seq_len, vocab_size=metadata.vocab_size,
                       num_puzzle_identifiers=metadata.num_puzzle_identifiers,
                       **config.model.to_dict())


def steps_per_epoch(config: ml_collections.ConfigDict, metadata) -> float:
  """Reference: one epoch = total_groups * mean_puzzle_examples examples."""
  return metadata.total_groups * metadata.mean_puzzle_examples / config.batch_size


def resolve_schedule(config: ml_collections.ConfigDict, metadata) -> tuple[int, int]:
  """(total_steps, eval_every_steps); the one place epochs become steps."""
  per_epoch = steps_per_epoch(config, metadata)
  total = config.total_steps if config.total_steps > 0 else int(config.epochs * per_epoch)
  every = (config.eval.every_steps if config.eval.every_steps > 0
           else int(config.eval.every_epochs * per_epoch))
  if total < 1:
    raise ValueError(f"The run has {total} steps: raise config.epochs or set "
                     "config.total_steps.")
  return total, max(1, min(every, total))


def _global_batch(host_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Host-local rows -> one global array per key, split along the batch."""
  shard = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(shard, np.asarray(v))
          for k, v in host_batch.items()}


def _to_host(tree):
  """Fetches (possibly multi-host) arrays; per-row arrays are gathered globally."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def load_evaluator(eval_cfg, split, workdir):
  """Evaluators are plug-ins: hrm_jax.evaluators.<type>.Evaluator."""
  try:
    module = importlib.import_module(f"hrm_jax.evaluators.{eval_cfg.type}")
  except ModuleNotFoundError as e:
    raise ValueError(f"config.eval.type={eval_cfg.type!r} has no module "
                     f"hrm_jax.evaluators.{eval_cfg.type}.") from e
  return module.Evaluator(split=split, eval_cfg=eval_cfg, workdir=workdir)


def evaluate(state, split, eval_fn, evaluator, config, mesh) -> dict[str, float]:
  """Runs the evaluator over the test split (or its first max_batches)."""
  evaluator.reset()
  batches: Iterator = data.eval_batches(split, config.eval.batch_size,
                                        jax.process_index(), jax.process_count())
  for i, host_batch in enumerate(batches):
    if 0 <= config.eval.max_batches <= i:
      break
    example_index = host_batch.pop("example_index")
    metric_sums, row_outputs = eval_fn(state, _global_batch(host_batch, mesh))
    rows = _to_host(row_outputs) if evaluator.needs_rows else None
    if rows is not None:
      rows["example_index"] = _to_host_np(example_index)
      rows["puzzle_identifiers"] = _to_host_np(host_batch["puzzle_identifiers"])
    evaluator.add(jax.device_get(metric_sums), rows)
  return evaluator.result()


def _to_host_np(local: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return local
  return np.asarray(multihost_utils.process_allgather(local, tiled=True))


class _NonFinite(FloatingPointError):
  pass


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains (resuming if WORKDIR has a checkpoint) and returns the last eval."""
  _, last_eval = run(config, workdir)
  return last_eval


def run(config: ml_collections.ConfigDict, workdir: str):
  """`train_and_evaluate`, also returning the final train state (for tests)."""
  # ---- Setup.
  run_start = time.perf_counter()
  workdir = checkpoint.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if config.get("enable_x64", False):
    jax.config.update("jax_enable_x64", True)  # float64 stablemax, as the reference
  jax.config.update("jax_threefry_partitionable", True)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divides(config.batch_size, mesh)
  if config.eval.batch_size % mesh.devices.size:
    raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must divide by "
                     f"the {mesh.devices.size} devices.")

  # ---- Data.
  train_split = data.load(config.data, "train")
  test_split = data.load(config.data, "test")
  metadata = train_split.metadata
  if jax.process_index() == 0:  # lets solve/visualize load the model without the data
    data.write_dataset_info(workdir, test_split.metadata, test_split.identifiers)
  total_steps, eval_every = resolve_schedule(config, metadata)
  sampler = data.TrainSampler(train_split, config.batch_size, config.seed,
                              jax.process_index(), jax.process_count())

  # ---- Model and optimizer.
  model_cfg = model_config(config, metadata)
  model = hrm.HRMInner(model_cfg)
  step_fn, tx = steps.make_train_step(model, config.opt, total_steps, config.batch_size)

  # ---- Shard and initialise.
  init_rng, loop_rng = jax.random.split(jax.random.key(config.seed))
  state, state_sh = state_lib.create_sharded_state(model, tx, init_rng, mesh)
  carry, carry_sh = state_lib.create_sharded_carry(model_cfg, config.batch_size, mesh)
  batch_sh = sharding.batch_sharding(mesh)

  # ---- Restore.
  ckpt = checkpoint.Checkpointer(workdir, every_steps=config.ckpt.every_steps,
                                 max_to_keep=config.ckpt.max_to_keep,
                                 async_save=config.ckpt.async_save)
  restored = ckpt.restore_latest(state_lib.abstract_with_shardings(state, state_sh),
                                 state_lib.abstract_with_shardings(carry, carry_sh))
  if restored is not None:
    step, state, restored_carry, data_state = restored
    carry = carry if restored_carry is None else restored_carry
    sampler.set_state(data_state)
    logging.info("Resumed from step %d.", step)
  step = int(jax.device_get(state.step))

  # ---- Jitted functions and evaluators.
  train_fn = jax.jit(step_fn, in_shardings=(state_sh, carry_sh, batch_sh, None),
                     out_shardings=(state_sh, carry_sh, None), donate_argnums=(0, 1))
  eval_halt_steps = (config.eval.halt_max_steps if config.eval.halt_max_steps > 0
                     else model_cfg.halt_max_steps)
  eval_fn = jax.jit(functools.partial(
      steps.eval_step, model=model, halt_max_steps=eval_halt_steps,
      adaptive_halting=config.eval.adaptive_halting))
  evaluator = load_evaluator(config.eval, test_split, workdir)

  writer = metric_writers.create_default_writer(workdir, jax.process_index(), log=False)
  progress = metric_writers.ProgressReporter(total_steps, config.batch_size,
                                             loss_key="train/loss",
                                             accuracy_key="train/accuracy")
  preempted = checkpoint.install_preemption_handler()
  num_params = hrm.count_params(state.params)
  logging.info("HRM: %s parameters (+ puzzle embedding %s); %d processes, %d devices, "
               "mesh %s; global batch %d (%d per process); %d steps, eval every %d.",
               f"{num_params:,}", state.puzzle_emb.shape, jax.process_count(),
               jax.device_count(), dict(mesh.shape), config.batch_size,
               config.batch_size // jax.process_count(), total_steps, eval_every)
  if step == 0:
    writer.write_scalars(0, {"num_params": num_params, "total_steps": total_steps})

  # ---- Loop.
  sums: dict[str, float] = {}
  sums_steps = 0
  last_eval: dict[str, float] = {}
  pending = None  # (step, device metrics) fetched after the next step is dispatched

  def absorb(pending_step, device_metrics):
    nonlocal sums_steps
    host = jax.device_get(device_metrics)
    # A finite loss can still come with a non-finite gradient, whose update
    # poisons the state: check both before any checkpoint holds this step.
    if not (np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])):
      last = ckpt.latest_step()
      kept = (f"The last good checkpoint (step {last}) in {ckpt.directory} is kept"
              if last is not None else "No checkpoint was written yet")
      parts = {k: float(v) for k, v in host.items() if k.endswith(("loss", "norm"))}
      raise _NonFinite(
          f"Non-finite training loss or gradient at step {pending_step} ({parts}); stopping. {kept}: "
          "lower config.opt.lr or use float32 (config.model.forward_dtype) and resume.")
    for k, v in host.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    sums_steps += 1

  try:
    while step < total_steps:
      host_batch = next(sampler)
      state, carry, metrics = train_fn(state, carry, _global_batch(host_batch, mesh),
                                       loop_rng)
      step += 1
      if pending is not None:
        absorb(*pending)
      pending = (step, metrics)

      is_last = step == total_steps
      if step % config.log_every_steps == 0 or is_last:
        absorb(*pending)
        pending = None
        reduced = steps.reduce_train_metrics(sums, sums_steps, config.batch_size)
        scalars = {f"train/{k}": v for k, v in reduced.items()}
        scalars["train/epoch"] = sampler.epoch
        writer.write_scalars(step, scalars)
        writer.flush()
        if jax.process_index() == 0:
          progress.report(step, scalars)  # logs the progress line
        sums, sums_steps = {}, 0

      if step % eval_every == 0 or is_last:
        t0 = time.perf_counter()
        last_eval = evaluate(state, test_split, eval_fn, evaluator, config, mesh)
        scalars = {f"eval/{k}": v for k, v in last_eval.items()}
        # Seconds since this process started the run: time-to-accuracy benchmarks.
        scalars["eval/elapsed_s"] = time.perf_counter() - run_start
        writer.write_scalars(step, scalars)
        writer.flush()
        logging.info("eval at step %d (%.1fs): %s", step, time.perf_counter() - t0,
                     metric_writers.format_scalars(step, last_eval))

      stop = _agree(preempted()) or step == config.get("stop_at_step", -1)
      if ckpt_due(ckpt, step, config) or stop or is_last:
        if pending is not None:  # never save a state whose loss we have not checked
          absorb(*pending)
          pending = None
        ckpt.save(step, state, carry, sampler.get_state(), config, force=stop or is_last)
      if stop:
        logging.warning("Stopping at step %d (SIGTERM or config.stop_at_step): "
                        "checkpoint saved; rerun the same command to resume.", step)
        break
  finally:
    ckpt.close()
    writer.close()
    preempted.uninstall()
  logging.info("Final params checksum (process %d): %s", jax.process_index(),
               params_checksum(state.params))
  return state, last_eval


def params_checksum(params) -> str:
  """sha256 over this process's own shards: equal on every process of a healthy run."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    for shard in sorted(leaf.addressable_shards, key=lambda s: str(s.index)):
      digest.update(np.ascontiguousarray(np.asarray(shard.data)).tobytes())
  return digest.hexdigest()[:16]


def ckpt_due(ckpt, step: int, config) -> bool:
  del ckpt
  return step % config.ckpt.every_steps == 0


def _agree(flag: bool) -> bool:
  """All processes stop together if any one was told to."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
