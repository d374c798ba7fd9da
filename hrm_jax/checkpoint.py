"""Saving and resuming a run: one orbax CheckpointManager, WORKDIR/checkpoints.

Each checkpoint step holds four items, saved together so they always agree:

* "state": the train state pytree (params, optimiser states, step), arrays
  possibly sharded; restored straight into the shardings of an abstract
  target, never onto one device first.
* "carry": the ACT carry, so a resumed run continues the very segments it was
  in (optional: a trainer that restarts with all rows halted saves None).
* "data": the data-iterator position, a JSON dict.
* "config": the run's ml_collections config as JSON, for humans and for the
  `solve` tool (`Checkpointer.read_config`).

Resume policy (`restore_latest`): newest step first; a step that cannot be
read (truncated or corrupt files) is skipped with a warning and the previous
one is tried. Once an older step restored, every newer unreadable step is
moved aside to `checkpoints/corrupt/<step>-<time>` (kept for inspection,
outside orbax's step listing, never read again), so the run saves that step
afresh when it reaches it instead of keeping a corrupt newest checkpoint
forever. A step whose array shapes do not fit the target is a configuration
error, not corruption: it raises at once, naming every mismatching parameter
path, instead of crashing deep inside tensorstore or silently resuming from
an older step. A save killed half-way (kill -9, a full disk) leaves only
orbax's temporary directory, which is not a step and is removed on the next
start.

Weights only (`restore_weights`): the tools and fine-tuning restore just
`params`, `buffers`, `puzzle_emb` (and `ema` when saved) from the state item,
so no optimiser has to be built to match its tree. They load the newest step
or fail loudly, naming it (`CorruptCheckpointError`): answering from an older
step without saying so would pass off another model as this run's.
`save_weights` writes such a checkpoint alone (what `convert` makes of a
released PyTorch model).

Paths go through etils.epath so the workdir may be local or gs://.
"""
import json
import os
import time
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from hrm_jax import errors, tree_shapes
from orbax.checkpoint import checkpoint_managers as save_decision_lib

PyTree = Any

CHECKPOINT_DIR = "checkpoints"
# Unreadable steps are moved here (a sub-directory: orbax reads a top-level
# name such as "corrupt_4" as step 4).
CORRUPT_DIR = "corrupt"
_STATE, _CARRY, _DATA, _CONFIG = "state", "carry", "data", "config"
# The state entries a trained model is made of (`state.Weights`, + the EMA).
WEIGHT_KEYS = ("params", "buffers", "puzzle_emb", "ema")


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the abstract target restored into."""


class WeightsOnlyError(ValueError):
  """A weights-only checkpoint was asked for a full training state."""


class CorruptCheckpointError(RuntimeError):
  """No usable checkpoint: every step (or the one asked for) is unreadable."""


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Tells the manager how to save/restore/read metadata of each item."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for name in (_STATE, _CARRY):
    registry.add(name, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
    registry.add(name, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
  for name in (_DATA, _CONFIG):
    registry.add(name, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
    registry.add(name, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
  return registry


def _json_default(value: Any) -> Any:
  """NumPy/JAX scalars and arrays as Python numbers/lists; else str."""
  if hasattr(value, "tolist"):
    return value.tolist()
  return str(value)


def _to_json(tree: ml_collections.ConfigDict | Mapping[str, Any]):
  """A JSON-compatible dict (tuples become lists, numpy ints Python ints)."""
  if isinstance(tree, ml_collections.ConfigDict):
    return json.loads(tree.to_json_best_effort())
  return json.loads(json.dumps(dict(tree), default=_json_default))


def check_fits(item: str, saved_metadata: PyTree, target: PyTree) -> None:
  """Raises CheckpointMismatchError unless every saved shape fits `target`.

  Args:
    item: item name, for the message.
    saved_metadata: orbax TreeMetadata (or its `.tree`) of the saved item.
    target: the abstract pytree about to be restored into.
  """
  saved_tree = getattr(saved_metadata, "tree", saved_metadata)
  problems = tree_shapes.mismatches(saved_tree, target, "checkpoint", "target",
                                    prefix=f"{item}/")
  if problems:
    raise CheckpointMismatchError(
        f"Checkpoint item {item!r} does not fit the model/optimiser being "
        "restored (did the config change?):\n" + "\n".join(problems))


def absolute(path: epath.PathLike) -> epath.Path:
  """Local paths made absolute; URIs (gs://...) unchanged."""
  text = os.fspath(path)
  return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


class Checkpointer:
  """Periodic, async, self-pruning checkpoints of one run.

  Typical use in the train loop:

    ckpt = Checkpointer(workdir, every_steps=config.ckpt.every_steps)
    restored = ckpt.restore_latest(abstract_state, abstract_carry)
    ...
    ckpt.save(step, state, carry, data_state, config)  # no-op off-interval
    ...
    ckpt.save(step, state, carry, data_state, config, force=True)  # at exit
    ckpt.close()  # waits for the async save

  Every process of a multi-host job must make the same calls (orbax
  coordinates the write of sharded arrays across processes).
  """

  def __init__(self,
               workdir: epath.PathLike,
               every_steps: int,
               max_to_keep: int | None = 3,
               async_save: bool = True):
    """Opens (creating if needed) WORKDIR/checkpoints.

    Args:
      workdir: run directory, local or gs://.
      every_steps: `save` writes only on multiples of this (unless forced).
      max_to_keep: newest checkpoints kept; None keeps all.
      async_save: write arrays in a background thread; `save` returns once
        the arrays are copied off the devices.
    """
    # Orbax rejects relative paths (and only notices inside the async save).
    self._directory = absolute(workdir) / CHECKPOINT_DIR
    # Orbax's default policy also saves the first step a run reaches; we want
    # exactly the multiples of every_steps (plus forced saves, and orbax's
    # own preemption saves when the JAX preemption service is running).
    policy = save_decision_lib.AnySavePolicy([
        save_decision_lib.FixedIntervalPolicy(every_steps),
        save_decision_lib.PreemptionCheckpointingPolicy(),
    ])
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_decision_policy=policy,
        enable_async_checkpointing=async_save,
        # A save killed half-way leaves <step>.orbax-checkpoint-tmp*; not a
        # step, but clutter: removed when the manager opens.
        cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(
        self._directory, options=options, handler_registry=_handler_registry())

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def latest_step(self) -> int | None:
    """Newest saved step (including one still being written), or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All saved steps, oldest first."""
    return sorted(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """Whether `save(step, ...)` would write without `force` (the one save
    policy: the manager's interval, plus preemption saves)."""
    return step not in self._manager.all_steps() and self._manager.should_save(step)

  def save(self,
           step: int,
           state: PyTree,
           carry: PyTree | None,
           data_state: Mapping[str, Any],
           config: ml_collections.ConfigDict | Mapping[str, Any] | None,
           force: bool = False) -> bool:
    """Saves all items at `step` if it is a save step (or `force`).

    Args:
      step: the train step the state is at.
      state: train-state pytree of jax arrays.
      carry: ACT-carry pytree, or None to not save one.
      data_state: data-iterator position: a dict of JSON types (NumPy
        scalars/arrays are converted to Python numbers/lists).
      config: the run config (ConfigDict or dict), stored as JSON.
      force: save even off the `every_steps` interval.

    Returns:
      True if a save was started (async) or done.
    """
    if step in self._manager.all_steps():
      logging.info("Checkpoint of step %d already exists; not saving.", step)
      return False
    items = {
        _STATE: ocp.args.StandardSave(state),
        _DATA: ocp.args.JsonSave(_to_json(data_state)),
    }
    if carry is not None:
      items[_CARRY] = ocp.args.StandardSave(carry)
    if config is not None:
      items[_CONFIG] = ocp.args.JsonSave(_to_json(config))
    saved = self._manager.save(
        step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("Saving checkpoint of step %d to %s", step, self._directory)
    return saved

  def _saved_items(self, step: int) -> set[str]:
    """Item names present in the checkpoint of `step`."""
    step_dir = self._directory / str(step)
    return {name for name in (_STATE, _CARRY, _DATA, _CONFIG)
            if (step_dir / name).exists()}

  def _restore_step(self, step: int, abstract_state: PyTree,
                    abstract_carry: PyTree | None):
    """Restores one step; raises CheckpointMismatchError or any read error."""
    present = self._saved_items(step)
    if _STATE in present and _DATA not in present:
      raise WeightsOnlyError(
          f"{self._directory}/{step} holds weights only (a converted or exported "
          "model), not a training state: start a new run from it with "
          f"--config.init_from={self._directory.parent} and another --workdir.")
    if _STATE not in present or _DATA not in present:
      raise FileNotFoundError(
          f"step {step} lacks items {sorted({_STATE, _DATA} - present)}")
    want_carry = abstract_carry is not None and _CARRY in present
    if abstract_carry is not None and not want_carry:
      logging.warning("Checkpoint of step %d has no carry; the trainer must "
                      "start from a fresh carry.", step)
    metadata = self._manager.item_metadata(step)
    check_fits(_STATE, metadata[_STATE], abstract_state)
    items = {
        _STATE: ocp.args.StandardRestore(abstract_state),
        _DATA: ocp.args.JsonRestore(),
    }
    if want_carry:
      check_fits(_CARRY, metadata[_CARRY], abstract_carry)
      items[_CARRY] = ocp.args.StandardRestore(abstract_carry)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    carry = restored[_CARRY] if want_carry else None
    return restored[_STATE], carry, restored[_DATA]

  def restore_latest(
      self,
      abstract_state: PyTree,
      abstract_carry: PyTree | None = None,
  ) -> tuple[int, PyTree, PyTree | None, dict[str, Any]] | None:
    """Restores the newest readable checkpoint into the given targets.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with shardings (e.g.
        from `jax.eval_shape` plus the run's shardings); arrays are restored
        directly into these shardings and dtypes.
      abstract_carry: same for the carry, or None to skip restoring it.

    Returns:
      None if the run has no checkpoint, else (step, state, carry,
      data_state); carry is None if not requested or not saved.

    Raises:
      CheckpointMismatchError: the newest readable checkpoint's shapes or
        tree do not fit the targets (message lists each offending path).
      CorruptCheckpointError (a RuntimeError): checkpoints exist but none of
        them could be read; we do not silently start from scratch over a
        run's history (and move nothing aside then).
    """
    self._manager.wait_until_finished()
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    failures, unreadable = [], []
    for step in steps:
      try:
        state, carry, data_state = self._restore_step(
            step, abstract_state, abstract_carry)
      except (CheckpointMismatchError, WeightsOnlyError):
        raise
      except Exception as e:  # pylint: disable=broad-exception-caught
        # Orbax/tensorstore raise many types for unreadable files; any of
        # them means "this step is unusable", so try the previous one.
        logging.warning(
            "Checkpoint of step %d in %s is unreadable (%s: %s); falling "
            "back to the previous checkpoint.", step, self._directory,
            type(e).__name__, errors.first_line(e))
        failures.append(f"step {step}: {type(e).__name__}: {errors.first_line(e)}")
        unreadable.append(step)
        continue
      for bad in unreadable:
        self._move_aside(bad)
      logging.info("Restored checkpoint of step %d from %s", step,
                   self._directory)
      return step, state, carry, data_state
    raise CorruptCheckpointError(
        f"No readable checkpoint in {self._directory} (steps "
        f"{', '.join(map(str, sorted(unreadable)))}); nothing was moved or deleted. "
        "Restore the directory from a backup, or move it away to start the run "
        "afresh:\n" + "\n".join(failures))

  def corrupt_directory(self) -> epath.Path:
    """Where unreadable steps are moved (`checkpoints/corrupt/`)."""
    return self._directory / CORRUPT_DIR

  def _move_aside(self, step: int) -> None:
    """Moves the unreadable `step` to checkpoints/corrupt/<step>-<time> (once,
    by process 0, after every process has finished reading), so it is never
    read again and the step can be saved anew."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"hrm_jax move aside step {step}")
    if jax.process_index() == 0:
      target = self.corrupt_directory() / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
      target.parent.mkdir(parents=True, exist_ok=True)
      (self._directory / str(step)).rename(target)
      logging.warning("Moved the unreadable checkpoint of step %d to %s (kept for "
                      "inspection, never read again); step %d can be saved afresh.",
                      step, target, step)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"hrm_jax moved aside step {step}")
    self._manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True at the step all processes agreed to save at after a preemption
    notice (JAX's preemption sync point; multi-process runs only)."""
    return self._manager.reached_preemption(step)

  def save_weights(self, step: int, weights: Mapping[str, PyTree]) -> None:
    """Writes a weights-only checkpoint (no optimiser, carry or data position):
    `{"params", "buffers", "puzzle_emb"}` under the state item."""
    tree = {"step": jax.numpy.asarray(step, jax.numpy.int32), **weights}
    self._manager.save(step, args=ocp.args.Composite(
        **{_STATE: ocp.args.StandardSave(tree)}), force=True)
    self._manager.wait_until_finished()

  def restore_weights(self, sharding: jax.sharding.Sharding | None = None,
                      step: int | None = None) -> tuple[int, dict[str, PyTree]]:
    """Restores only the model's weights of the newest (or the given) step.

    Restores `params`, `buffers`, `puzzle_emb` and, when the run kept one,
    `ema`, in their saved shapes and dtypes, onto `sharding` (default: the
    first device); the optimiser state is never read. An unreadable step is
    an error naming it, never a silent answer from an older step.

    Returns:
      (step, {key: pytree}) for the keys of WEIGHT_KEYS that were saved.

    Raises:
      FileNotFoundError: no checkpoint (or no such step).
      CorruptCheckpointError: the step is unreadable.
    """
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    self._manager.reload()
    steps = sorted(self._manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"No checkpoints in {self._directory}.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise FileNotFoundError(f"No checkpoint of step {step} in {self._directory} "
                              f"(it has steps {steps}).")
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler)
    with ocp.CheckpointManager(self._directory, handler_registry=registry,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
      try:
        saved = self._manager.item_metadata(step)[_STATE]
        saved = getattr(saved, "tree", saved)
        target = {k: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            saved[k]) for k in WEIGHT_KEYS if saved.get(k) is not None}
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding),
                                    target)
        restored = m.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.PyTreeRestore(
            target, restore_args=restore_args, partial_restore=True)}))
      except Exception as e:  # pylint: disable=broad-exception-caught
        older = [s for s in steps if s < step]
        fix = ("rerun the training command once: it moves the step to "
               f"{self.corrupt_directory()}/ and resumes from step {older[-1]}, or move "
               f"{self._directory / str(step)} away yourself to use step {older[-1]}"
               if older else "it is the only checkpoint: retrain, or restore it from a "
               "backup")
        raise CorruptCheckpointError(
            f"The checkpoint of step {step} in {self._directory} is unreadable "
            f"({type(e).__name__}: {errors.first_line(e)}); not falling back to an older "
            f"step silently: {fix}.") from None
    logging.info("Loaded the weights of step %d from %s.", step, self._directory)
    return step, dict(restored[_STATE])

  @staticmethod
  def read_config(workdir: epath.PathLike,
                  step: int | None = None) -> dict[str, Any]:
    """The config saved with a checkpoint of `workdir` (newest if no step).

    Args:
      workdir: run directory (the one holding checkpoints/).
      step: checkpoint step, or None for the newest.

    Returns:
      The config as a JSON dict; `ml_collections.ConfigDict(d)` rebuilds it.
    """
    directory = epath.Path(workdir) / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(directory, options=options,
                               handler_registry=_handler_registry()) as mngr:
      if step is None:
        step = mngr.latest_step()
        if step is None:
          raise FileNotFoundError(f"No checkpoints in {directory}")
      restored = mngr.restore(
          step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
    return restored[_CONFIG]

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
