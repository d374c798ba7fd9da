"""A run directory (WORKDIR) and what it holds; the one owner of its layout.

  WORKDIR/config.json     the run's config (ml_collections as JSON)
  WORKDIR/dataset.json    what a model needs from its dataset: vocabulary,
                          length, puzzle-id count and names (`DatasetMetadata`)
  WORKDIR/checkpoints/N/  orbax checkpoints (`checkpoint.Checkpointer`): the
                          newest `config.ckpt.max_to_keep` steps
  WORKDIR/checkpoints/corrupt/<step>-<time>/
                          steps that could not be read, moved aside on resume
                          (kept for inspection; safe to delete)
  WORKDIR/metrics.jsonl   scalars, one JSON object a line (`metric_writers`)
  WORKDIR/tensorboard/    TensorBoard events: scalars, steps/s, the config as
                          hparams (`tensorboard --logdir WORKDIR/tensorboard`)
  WORKDIR/profile/        a `jax.profiler` trace when config.profile_steps > 0
  WORKDIR/visualize/      pictures written by `python -m hrm_jax.visualize`

A workdir is self-contained for inference: `load_weights` rebuilds the model
from config.json + dataset.json and restores only the weights (no optimiser,
no dataset). `convert` writes the same layout for a released PyTorch model,
so there is one checkpoint format and one loader. JSON files are written
atomically (a temporary file renamed over the old one), so a crash never
leaves half a file, and only once every resume check passed, so a failed
resume never breaks the run it was pointed at; one that fails is explained
against the saved config.json (`explain_resume_mismatch`). The trainer creates the
directory only once its data and model are ready: a command that fails before
(a typo, bad data) leaves nothing behind (`check_writable`,
`remove_if_empty`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from etils import epath
import jax
import ml_collections

from hrm_jax import checkpoint, models, tree_shapes
from hrm_jax import state as state_lib
from hrm_jax.data import puzzles

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked; the message says why and what to do."""


def write_json_atomically(path: epath.PathLike, obj: Any) -> None:
  path = epath.Path(path)
  text = json.dumps(obj, indent=1, sort_keys=True)
  if path.exists() and path.read_text() == text:
    return
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_text(text)
  tmp.replace(path)


def check_writable(workdir: epath.PathLike) -> None:
  """Fails now, not after the data build, when WORKDIR cannot be written.

  Probes with a temporary directory inside WORKDIR, or (when it does not exist
  yet) inside its nearest existing ancestor; creates nothing that stays.
  Object stores (gs://...) are not probed.

  Raises:
    PermissionError, OSError: what the filesystem says (a read-only or
      foreign directory, a full disk).
    WorkdirError: a path component is a file.
  """
  text = os.fspath(workdir)
  if "://" in text:
    return
  path = os.path.abspath(os.path.expanduser(text))
  probe_in = path
  while not os.path.exists(probe_in):
    probe_in = os.path.dirname(probe_in)
  if not os.path.isdir(probe_in):
    raise WorkdirError(f"--workdir={text!r}: {probe_in!r} is a file, not a directory; "
                       "choose another --workdir.")
  probe = os.path.join(probe_in, f".hrm_jax_write_test_{os.getpid()}")
  try:
    os.mkdir(probe)
  except PermissionError as e:
    raise PermissionError(e.errno, e.strerror, path) from None
  os.rmdir(probe)


def _holds_files(path: str) -> bool:
  return any(files for _, _, files in os.walk(path))


def remove_if_empty(workdir: epath.PathLike) -> bool:
  """Removes WORKDIR (local) if it holds no file at all; True if removed. For a
  command that created the directory and then failed before writing anything."""
  text = os.fspath(workdir)
  if "://" in text or not os.path.isdir(text) or _holds_files(text):
    return False
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(text, ignore_errors=True)
  return True


def write_config(workdir: epath.PathLike, config: ml_collections.ConfigDict) -> None:
  write_json_atomically(epath.Path(workdir) / CONFIG_FILE,
                        json.loads(config.to_json_best_effort()))


def read_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """WORKDIR/config.json (runs older than it: the config saved with the newest
  checkpoint), as a ConfigDict."""
  root = epath.Path(workdir)
  path = root / CONFIG_FILE
  if path.exists():
    saved = json.loads(path.read_text())
  elif (root / checkpoint.CHECKPOINT_DIR).exists():
    try:
      saved = checkpoint.Checkpointer.read_config(root)
    except FileNotFoundError as e:
      raise WorkdirError(f"{os.fspath(workdir)!r}: {e}") from None
  else:
    raise WorkdirError(f"{os.fspath(workdir)!r} has no {CONFIG_FILE} and no "
                       f"{checkpoint.CHECKPOINT_DIR}/ directory: pass the --workdir of a "
                       "training run (or a `hrm_jax.convert` output).")
  if "family" not in saved.get("data", {}) and "name" in saved.get("data", {}):
    saved["data"]["family"] = saved["data"].pop("name")  # runs before the rename
  # JSON turns tuples into lists; nothing the model reads is a tuple.
  return ml_collections.ConfigDict(saved)


# Fields that never affect a resume (where things go, what is logged); every
# other difference is listed when a resume fails. (eval.every_steps and
# total_steps can matter too: they set the sampler's iteration length.)
_IRRELEVANT_TO_RESUME = ("init_from", "profile_steps", "log_every_steps", "data.data_dir",
                         "data.num_workers", "grad_accum_steps", "auto_accumulate",
                         "cpu_variant")


def _config_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
  """`key: saved -> now` for every field that differs (but those of
  `_IRRELEVANT_TO_RESUME` and ckpt.*)."""
  changes = []
  for key in sorted(set(saved) | set(now)):
    path = f"{prefix}{key}"
    a, b = saved.get(key), now.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      changes += _config_changes(a, b, path + ".")
    elif path not in _IRRELEVANT_TO_RESUME and not path.startswith("ckpt."):
      if (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple)
                                                       else b):
        changes.append(f"{path}: {a!r} -> {b!r}")
  return changes


def explain_resume_mismatch(error: Exception, workdir: epath.PathLike,
                            config: ml_collections.ConfigDict) -> Exception:
  """A resume that cannot work, explained: what changed since the saved run
  and the ways out, before the details."""
  try:
    saved = read_config(workdir).to_dict()
  except Exception:  # pylint: disable=broad-exception-caught
    saved = None
  now = json.loads(config.to_json_best_effort())
  changes = _config_changes(saved, now) if saved is not None else []
  what = ("; ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4
                                    else "")) if changes else "nothing in config.json"
  message = (
      f"Cannot resume {workdir} with this config (changed since the saved run: {what}). "
      f"Resume with the saved values ({epath.Path(workdir) / CONFIG_FILE}), or start a "
      f"new --workdir (add --config.init_from={workdir} to start from its weights).\n"
      + str(error))
  return checkpoint.CheckpointMismatchError(message)


def write_dataset_info(workdir: epath.PathLike, metadata: puzzles.DatasetMetadata,
                       identifiers: list[str] | None) -> None:
  """WORKDIR/dataset.json: vocab, length, puzzle ids and their names (None when
  unknown, e.g. a converted model given no identifiers.json)."""
  write_json_atomically(epath.Path(workdir) / DATASET_FILE, {
      "metadata": dataclasses.asdict(metadata),
      "identifiers": None if identifiers is None else list(identifiers)})


def read_dataset_info(workdir: epath.PathLike
                      ) -> tuple[puzzles.DatasetMetadata, list[str] | None] | None:
  """(metadata, identifiers) from WORKDIR/dataset.json; None if absent."""
  path = epath.Path(workdir) / DATASET_FILE
  if not path.exists():
    return None
  saved = json.loads(path.read_text())
  identifiers = saved.get("identifiers")
  return (puzzles.DatasetMetadata(**saved["metadata"]),
          None if identifiers is None else list(identifiers))


@dataclasses.dataclass
class TrainedModel:
  """A model restored from a workdir, ready for `act.rollout`.

  Attributes:
    model: the family's linen module (its `.config` is the model config).
    weights: params (the EMA shadow when the run kept one), buffers, puzzle table.
    config: the run config.
    metadata: the dataset's metadata (dataset.json).
    identifiers: puzzle id -> name, or None if unknown.
    step: the checkpoint's step.
    directory: the workdir, for messages.
  """
  model: Any
  weights: state_lib.Weights
  config: ml_collections.ConfigDict
  metadata: puzzles.DatasetMetadata
  identifiers: list[str] | None
  step: int
  directory: str

  @property
  def family(self) -> str:
    return str(self.config.data.family)


def dataset_info(workdir: epath.PathLike, config: ml_collections.ConfigDict):
  """dataset.json of a run, or (older runs) the metadata of its test split."""
  saved = read_dataset_info(workdir)
  if saved is None:
    from hrm_jax import data  # pylint: disable=import-outside-toplevel
    test_split = data.load(config.data, "test")
    saved = (test_split.metadata, list(test_split.identifiers))
  return saved


def load_weights(workdir: epath.PathLike, sharding: jax.sharding.Sharding | None = None,
                 step: int | None = None) -> TrainedModel:
  """The newest readable (or the given) checkpoint's weights, with their model.

  Raises:
    WorkdirError: no config, no checkpoint, or weights that do not fit the
      model the config describes.
  """
  config = read_config(workdir)
  metadata, identifiers = dataset_info(workdir, config)
  model_cfg = models.make_config(config.model, metadata)
  model = models.build(model_cfg)
  # Checked before any checkpoint manager exists: a manager would create the
  # directory, and its clean-up thread races the exit of a tool that fails here.
  ckpt_dir = epath.Path(workdir) / checkpoint.CHECKPOINT_DIR
  if not ckpt_dir.is_dir() or not any(ckpt_dir.iterdir()):
    raise WorkdirError(f"{os.fspath(workdir)!r} has no checkpoint yet (nothing in "
                       f"{os.fspath(ckpt_dir)}).")
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, async_save=False)
  try:
    step, saved = ckpt.restore_weights(sharding, step)
  except FileNotFoundError:
    raise WorkdirError(f"{os.fspath(workdir)!r} has no checkpoint yet (nothing in "
                       f"{ckpt.directory}).") from None
  except RuntimeError as e:
    raise WorkdirError(str(e)) from None
  finally:
    ckpt.close()
  expected = jax.eval_shape(lambda: models.family_of(model_cfg).init_variables(
      model, jax.random.key(0)))
  want = {"params": expected["params"], "buffers": expected["buffers"]}
  have = {"params": saved["params"], "buffers": saved["buffers"]}
  lines = tree_shapes.mismatches(have, want, "checkpoint", "model")
  if lines:
    raise WorkdirError(f"The weights in {os.fspath(workdir)!r} do not fit the model its "
                       f"{CONFIG_FILE} describes:\n" + "\n".join(lines))
  buffers = jax.tree.map(lambda b, e: b.astype(e.dtype), saved["buffers"],
                         expected["buffers"])
  params = saved.get("ema") if saved.get("ema") is not None else saved["params"]
  weights = state_lib.Weights(params=params, buffers=buffers,
                              puzzle_emb=saved["puzzle_emb"])
  return TrainedModel(model=model, weights=weights, config=config, metadata=metadata,
                      identifiers=identifiers, step=int(step),
                      directory=os.fspath(workdir))
