"""Loading a trained HRM for inference, running it, and checking its answers.

Shared by `visualize` (pictures of a run) and `solve` (one puzzle from the
command line), so that both read checkpoints, build the jitted evaluation and
judge predictions the same way.

Two kinds of checkpoint are loaded into the same `Loaded` bundle:

* our runs (`load_workdir`): the newest checkpoint in WORKDIR/checkpoints plus
  the run config saved with it. Restoring needs the optimiser-state *tree*
  (orbax checks it), so the optimiser is rebuilt from the saved config even
  though inference never uses it; everything lands on one device, since a
  single puzzle or a picture batch gains nothing from a mesh.
* converted official PyTorch checkpoints (`load_converted_dir`): the
  `hrm_jax.convert` output. These carry no dataset, so the puzzle family is
  whatever the caller says it is (checked against vocabulary and length), and
  ARC puzzle identifiers come only from an `identifiers.json` the user gives.
"""
# pylint: disable=invalid-name
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hrm_jax import checkpoint, state as state_lib, steps, train
from hrm_jax import data
from hrm_jax.data import arc as arc_data
from hrm_jax.data import maze as maze_data
from hrm_jax.data import puzzles
from hrm_jax.models import hrm

KINDS = ("sudoku", "maze", "arc")


class InferenceError(ValueError):
  """A checkpoint, puzzle or option the tools cannot use; the message says why."""


@dataclasses.dataclass
class Loaded:
  """A model ready for `predict`.

  Attributes:
    model: the inner model module.
    config: its HRMConfig (seq_len, vocab_size and halt_max_steps live here).
    state: a TrainState with params, buffers and the puzzle-embedding table
      (opt_state is dropped: inference never needs it).
    kind: "sudoku", "maze", "arc" or None (converted: not known).
    identifiers: puzzle id -> name (ARC variants), or None if unknown.
    run_config: the saved run config (our checkpoints only).
    step: the checkpoint's train step (our checkpoints only).
    source: where it came from, for messages.
  """
  model: hrm.HRMInner
  config: hrm.HRMConfig
  state: state_lib.TrainState
  kind: str | None
  identifiers: list[str] | None
  run_config: ml_collections.ConfigDict | None
  step: int | None
  source: str


# ------------------------------------------------------------------ loading


def read_run_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """The config saved with WORKDIR's newest checkpoint, as a ConfigDict."""
  ckpt_dir = epath.Path(workdir) / checkpoint.CHECKPOINT_DIR
  if not ckpt_dir.exists():
    raise InferenceError(f"{os.fspath(workdir)!r} has no {checkpoint.CHECKPOINT_DIR}/ "
                         "directory: pass the --workdir of a training run.")
  try:
    saved = checkpoint.Checkpointer.read_config(workdir)
  except FileNotFoundError as e:
    raise InferenceError(f"{os.fspath(workdir)!r}: {e}") from None
  # JSON turns tuples into lists; nothing the model or optimiser reads is a
  # tuple, so the dict round-trips as is.
  return ml_collections.ConfigDict(saved)


def load_workdir(workdir: epath.PathLike) -> Loaded:
  """Restores the newest checkpoint of a training run onto one device.

  Dataset metadata (vocabulary, length, puzzle ids and names) comes from the
  run's WORKDIR/dataset.json; runs older than that file fall back to the test
  split of the run's dataset (rebuilt in `config.data.data_dir` if missing).
  """
  config = read_run_config(workdir)
  saved = data.read_dataset_info(workdir)
  if saved is None:
    test_split = data.load(config.data, "test")
    saved = (test_split.metadata, list(test_split.identifiers))
  metadata, identifiers = saved
  model_cfg = train.model_config(config, metadata)
  model = hrm.HRMInner(model_cfg)
  total_steps = config.total_steps if config.total_steps > 0 else 1
  _, tx = steps.make_train_step(model, config.opt, total_steps, config.batch_size)
  abstract = jax.eval_shape(lambda k: state_lib.init_state(model, tx, k),
                            jax.random.key(0))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = state_lib.abstract_with_shardings(
      abstract, jax.tree.map(lambda _: device, abstract))
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, async_save=False)
  try:
    restored = ckpt.restore_latest(target, None)
  finally:
    ckpt.close()
  if restored is None:
    raise InferenceError(f"No checkpoint in {os.fspath(workdir)!r}.")
  step, state, _, _ = restored
  return Loaded(model=model, config=model_cfg, state=state.replace(opt_state=None),
                kind=str(config.data.name), identifiers=identifiers,
                run_config=config, step=int(step), source=os.fspath(workdir))


def read_identifiers(path: str) -> list[str]:
  """The reference's identifiers.json: a JSON list, id -> name."""
  if not os.path.isfile(path):
    raise InferenceError(f"identifiers file {path!r} not found.")
  try:
    with open(path) as f:
      names = json.load(f)
  except json.JSONDecodeError as e:
    raise InferenceError(f"identifiers file {path!r} is not valid JSON: {e}") from None
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise InferenceError(f"identifiers file {path!r} must hold a JSON list of names.")
  return names


def load_converted_dir(directory: str, identifiers_path: str | None = None) -> Loaded:
  """Loads a `hrm_jax.convert` output (an official checkpoint)."""
  # Imported here: convert pulls in flags-free but heavier conversion code.
  from hrm_jax import convert  # pylint: disable=g-import-not-at-top
  try:
    config, variables, table = convert.load_converted(directory)
  except FileNotFoundError as e:
    raise InferenceError(str(e)) from None
  if table is None:  # no puzzle embedding: rows of width 0 keep one code path
    table = jnp.zeros((max(1, config.num_puzzle_identifiers), 0), jnp.float32)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                               buffers=variables["buffers"], puzzle_emb=table,
                               opt_state=None)
  identifiers = read_identifiers(identifiers_path) if identifiers_path else None
  if identifiers is not None and len(identifiers) != table.shape[0]:
    raise InferenceError(
        f"{identifiers_path!r} names {len(identifiers)} puzzles but the checkpoint's "
        f"puzzle-embedding table has {table.shape[0]} rows: it belongs to another "
        "dataset.")
  return Loaded(model=hrm.HRMInner(config), config=config, state=state, kind=None,
                identifiers=identifiers, run_config=None, step=None, source=directory)


# ------------------------------------------------------------ compatibility


def sudoku_side(num_cells: int) -> int | None:
  """4, 6 or 9 for 16, 36 or 81 cells (the board sizes we encode), else None."""
  side = int(round(np.sqrt(num_cells)))
  return side if side * side == num_cells and side in (4, 6, 9) else None


def expected_vocab(kind: str, seq_len: int) -> int:
  """The vocabulary size an encoding of `kind` at `seq_len` tokens has."""
  if kind == "sudoku":
    side = sudoku_side(seq_len)
    return -1 if side is None else side + 2  # PAD, blank, digits 1..n
  if kind == "maze":
    return maze_data.VOCAB_SIZE
  return arc_data.VOCAB_SIZE


def describe(kind: str, seq_len: int) -> str:
  """"4x4 Sudoku (16 cells)", "30x30 maze", "ARC (30x30 canvas)"."""
  side = int(round(np.sqrt(seq_len)))
  if kind == "sudoku":
    return f"{side}x{side} Sudoku ({seq_len} cells)"
  if kind == "maze":
    return f"{side}x{side} maze ({seq_len} cells)"
  return "ARC (30x30 canvas)"


def check_compatible(loaded: Loaded, kind: str, seq_len: int) -> None:
  """Raises InferenceError unless `loaded` can solve a `kind` puzzle of seq_len.

  Args:
    loaded: the model.
    kind: family of the user's puzzle.
    seq_len: tokens the user's puzzle encodes to.
  """
  cfg = loaded.config
  if loaded.kind is not None and loaded.kind != kind:
    raise InferenceError(
        f"The model in {loaded.source!r} was trained on {loaded.kind} "
        f"({describe(loaded.kind, cfg.seq_len)}), but you gave a {kind} puzzle.")
  if seq_len != cfg.seq_len:
    raise InferenceError(
        f"Puzzle size does not match the model: you gave a "
        f"{describe(kind, seq_len)}, the model solves {describe(kind, cfg.seq_len)}"
        f" (seq_len {cfg.seq_len}).")
  if cfg.vocab_size != expected_vocab(kind, seq_len):
    raise InferenceError(
        f"The model's vocabulary ({cfg.vocab_size} tokens) is not that of a "
        f"{describe(kind, seq_len)} ({expected_vocab(kind, seq_len)} tokens): is "
        "it a model of another puzzle family?")


# --------------------------------------------------------------- prediction


@functools.lru_cache(maxsize=16)
def _eval_fn(model: hrm.HRMInner, halt_max_steps: int, adaptive: bool) -> Callable:
  """One jitted eval_step per (model, M, adaptive): cached, since the tools
  call it for several batches of the same shape."""
  return jax.jit(functools.partial(steps.eval_step, model=model,
                                   halt_max_steps=halt_max_steps,
                                   adaptive_halting=adaptive, keep_trajectory=True))


def predict(loaded: Loaded, inputs_BxS: np.ndarray, puzzle_identifiers_B: np.ndarray,
            *, halt_max_steps: int | None = None,
            adaptive: bool = False) -> dict[str, np.ndarray]:
  """Runs a fresh ACT carry over a batch and returns per-row numpy outputs.

  Args:
    loaded: the model.
    inputs_BxS: token ids.
    puzzle_identifiers_B: puzzle-embedding rows to use (0 = blank).
    halt_max_steps: segments at most (default: the model's); more than the
      training value is the paper's inference-time scaling.
    adaptive: stop each row when its Q head says halt (q_halt > q_continue)
      instead of always running halt_max_steps segments.

  Returns:
    predictions [B,S], trajectory [M,B,S] (argmax after each segment; rows
    that halted early repeat their final answer), steps [B] (segments used),
    q_halt_logits [B] and q_halt_confidence [B] = sigmoid(q_halt), all of the
    last segment each row ran.
  """
  M = halt_max_steps or loaded.config.halt_max_steps
  if M < 1:
    raise InferenceError(f"halt_max_steps must be >= 1, got {M}.")
  inputs = np.asarray(inputs_BxS, np.int32)
  batch = {
      "inputs": inputs,
      # No labels: eval_step's metric sums are ignored here.
      "labels": np.full(inputs.shape, puzzles.IGNORE_LABEL_ID, np.int32),
      "puzzle_identifiers": np.asarray(puzzle_identifiers_B, np.int32),
  }
  _, rows = _eval_fn(loaded.model, int(M), bool(adaptive))(loaded.state, batch)
  out = {k: np.asarray(v) for k, v in jax.device_get(rows).items()}
  out["q_halt_confidence"] = sigmoid(out["q_halt_logits"])
  return out


# ------------------------------------------------------------------- checks


def sigmoid(x: Any) -> Any:
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
