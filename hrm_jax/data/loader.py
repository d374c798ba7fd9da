"""`load(data_cfg, split)`: build the dataset once, then read it into memory.

Whole splits are held in numpy: the paper's datasets fit (Sudoku 1M x 81,
ARC ~4M x 900 uint8), and in-memory gathers make the sampler fast and its
state trivial. On several hosts sharing a data_dir, build first with
`python -m hrm_jax.data.build` so that the hosts do not race to write it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from etils import epath

from hrm_jax import errors

from hrm_jax.data import builders
from hrm_jax.data import families
from hrm_jax.data import npy_format
from hrm_jax.data import puzzles
from hrm_jax.data.errors import DataError

SPLITS = ("train", "test")


def load(data_cfg, split: str) -> puzzles.PuzzleSplit:
  """Returns `split` ("train" or "test") of the dataset `data_cfg` describes.

  `npy:<dir>` sources are read in place; everything else is built into
  `data_cfg.data_dir` as a TFDS dataset named by a hash of the config (a
  changed config builds anew), then read with batched `__getitems__` calls.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if data_cfg.source.startswith("npy:"):
    # Validated file by file as it is read (errors name the .npy file).
    return npy_format.read_split(data_cfg.source[len("npy:"):], split)
  builder = prepare(data_cfg)
  with _tfds_errors(data_cfg, builder, f"read the {split} split of"):
    data = builders.read_split(builder, split)
  puzzles.validate_split(
      data, f"{builder.name}/{builder.builder_config.name} {split} split in "
      f"{data_cfg.data_dir}",
      fix=f"The build is damaged or not ours: delete {builder.data_dir} "
      "and load again to rebuild it")
  return data


def shape(data_cfg) -> puzzles.DatasetShape:
  """Vocabulary, length and puzzle-id count of the dataset `data_cfg` describes,
  without building it (`npy:` datasets: read from their dataset.json)."""
  if data_cfg.source.startswith("npy:"):
    return npy_format.read_shape(data_cfg.source[len("npy:"):])
  return families.get(data_cfg.family).shape(data_cfg)


def prepare(data_cfg):
  """Builds the TFDS dataset if needed; returns the prepared builder.

  A build that fails (bad data, Ctrl-C) leaves nothing behind: TFDS removes
  its temporary directory, and `_remove_failed_build` the empty directories
  it had created around it, so a failed build never looks like a dataset.
  """
  with _tfds_errors(data_cfg):
    builder = builders.builder_for(data_cfg)
    prepared = builder.is_prepared()
  if not prepared:
    _progress_bars_only_on_a_terminal()
    start = time.time()
    print(f"[hrm_jax.data] building {builder.name}/"
          f"{builder.builder_config.name} in {data_cfg.data_dir}", flush=True)
    created = _missing_dirs(builder, data_cfg.data_dir)
    try:
      with _tfds_errors(data_cfg, builder, "build"):
        builder.download_and_prepare()
    except BaseException:
      _remove_failed_build(builder, created)
      raise
    print(f"[hrm_jax.data] built in {time.time() - start:.1f} s", flush=True)
  return builder


@contextlib.contextmanager
def _tfds_errors(data_cfg, builder=None, doing: str = "open") -> Iterator[None]:
  """TFDS's own exceptions (a refused builder config, an unreadable dataset_info,
  a half-written directory) as one DataError naming the dataset, the directory and
  the fix; ours (DataError), OS errors and interrupts pass through as they are."""
  try:
    yield
  except (DataError, OSError):
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    name = (f"{builder.name}/{builder.builder_config.name}" if builder is not None
            else f"hrm_{data_cfg.family}")
    where = builder.data_dir if builder is not None else data_cfg.data_dir
    raise DataError(
        f"TFDS could not {doing} the dataset {name} "
        f"in {where}: {type(e).__name__}: {errors.first_line(e)}. If that directory "
        "holds a damaged or foreign build, delete it (or set another "
        "config.data.data_dir) and rerun; otherwise this is a bug: rerun with "
        "HRM_JAX_TRACEBACK=1 and report it.") from e


def _progress_bars_only_on_a_terminal() -> None:
  """TFDS's tqdm bars redraw with escape codes: noise in a log file or a pipe,
  where our own one-line progress messages remain."""
  if not (sys.stderr.isatty() and sys.stdout.isatty()):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    tfds.display_progress_bar(False)


def _missing_dirs(builder, data_dir) -> list[epath.Path]:
  """The directories a build may create that do not exist yet, deepest
  first: the config's, the family's, TFDS's downloads/ and data_dir."""
  version = epath.Path(builder.data_dir)
  root = epath.Path(data_dir)
  candidates = [version.parent, version.parent.parent,
                root / "downloads", root]
  return [p for p in candidates if not p.exists()]


def _holds_files(path: epath.Path, ignore=()) -> bool:
  """Whether any file lies under `path`, outside its entries `ignore`."""
  for entry in path.iterdir():
    if entry.name in ignore:
      continue
    if not entry.is_dir() or _holds_files(entry):
      return True
  return False


def _remove_failed_build(builder, created: list[epath.Path]) -> None:
  """Deletes what a failed `download_and_prepare` left behind.

  The config directory goes if this build created it, or if it is empty;
  the other directories only if this build created them and they hold no
  file (the family's `.config/` is TFDS bookkeeping written at the start of
  every build), so another build sharing data_dir is never touched.
  """
  config_dir = epath.Path(builder.data_dir).parent
  for path in created + [config_dir]:
    if not path.exists():
      continue
    if path == config_dir and path in created:
      path.rmtree()
    elif path == config_dir or path in created:
      if not _holds_files(path, ignore=(".config",)):
        path.rmtree()
