"""Sweep expansion: an experiment's `sweep(add)` calls -> runs with workdirs.

Each experiment file defines `sweep(add)` (and optionally `sweep_<name>(add)`)
calling `add(**{"opt.lr": 1e-4, ...})` once per run. A run is those overrides
on top of the experiment config, in its own workdir
`ROOT/<index>_<slug>` (index first: names sort in sweep order and stay unique
when slugs collide or get truncated). Overrides become `--config.key=value`
flags of `hrm_jax.main`, so a sweep run is exactly a command a human could
type. Every override key is checked against the config at expansion time:
a typo fails here, not in 10 queued jobs.

`sweep_run.json` in each workdir records the run's overrides and command, so
`summarize` can build the results table from the workdirs alone.
"""
import dataclasses
import json
import pathlib
import re
from typing import Any, Callable, Sequence

from etils import epath

from experiments import common

MANIFEST = "sweep_run.json"
REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_SLUG = 48


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep."""
  index: int
  name: str  # "<index>_<slug>", the workdir's base name
  config: str  # "experiments/sudoku.py:cpu", as given to --config
  overrides: dict[str, Any]
  workdir: str

  def main_args(self) -> list[str]:
    """Arguments of `python -m hrm_jax.main` for this run."""
    return ([f"--config={self.config}", f"--workdir={self.workdir}"] +
            [f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()])

  def manifest(self) -> dict[str, Any]:
    return {"index": self.index, "name": self.name, "config": self.config,
            "overrides": self.overrides, "workdir": self.workdir,
            "main_args": self.main_args()}


def split_config_arg(config_arg: str) -> tuple[str, str | None]:
  """"experiments/sudoku.py:cpu" -> ("experiments/sudoku.py", "cpu")."""
  path, sep, variant = config_arg.partition(":")
  return path, (variant if sep else None)


def portable_config_arg(path: str, variant: str | None) -> str:
  """The --config value the runs get: relative to the repository if inside it.

  Runs start in the repository root (locally, on SLURM nodes, on TPU workers
  whose copy lives elsewhere), so a file inside the repository is named
  relative to it and any other file by its absolute path.
  """
  file = pathlib.Path(path)
  if not file.is_file() and (REPO / path).is_file():
    file = REPO / path
  file = file.resolve()
  try:
    text = str(file.relative_to(REPO))
  except ValueError:
    text = str(file)
  return text + (f":{variant}" if variant is not None else "")


def load_experiment(path: str):
  """Imports an experiment file by path (as config_flags does for --config);
  a repository-relative path works from any directory."""
  file = pathlib.Path(path)
  if not file.is_file() and (REPO / path).is_file():
    file = REPO / path  # "experiments/x.py" from outside the repository
  if not file.is_file():
    raise FileNotFoundError(f"No experiment file {path!r}.")
  return common.load_experiment(str(file))


def format_value(value: Any) -> str:
  """A value as ml_collections' --config.key=VALUE parser reads it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value)  # shortest round-trip form: 5e-05, 0.1
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def slug(overrides: dict[str, Any]) -> str:
  """Short, filesystem-safe summary: {"opt.lr": 5e-05} -> "lr5e-05"."""
  parts = []
  for key, value in overrides.items():
    leaf = key.rsplit(".", 1)[-1]
    parts.append(leaf + re.sub(r"[^A-Za-z0-9.+-]+", "-", format_value(value)).strip("-"))
  text = "_".join(parts) or "base"
  return text[:MAX_SLUG].rstrip("_-.")


def _check_override(config, key: str, value: Any) -> None:
  node = config
  *parents, leaf = key.split(".")
  for part in parents:
    if part not in node:
      raise KeyError(f"Sweep override {key!r}: config has no field {part!r}.")
    node = node[part]
  if leaf not in node:
    raise KeyError(f"Sweep override {key!r}: config has no field {leaf!r}.")
  current = node[leaf]
  if isinstance(current, bool) != isinstance(value, bool) or (
      isinstance(current, (int, float)) and not isinstance(value, (int, float))):
    raise TypeError(f"Sweep override {key}={value!r} does not match the config's "
                    f"{type(current).__name__} value {current!r}.")


def collect(module, sweep_name: str | None) -> list[dict[str, Any]]:
  """The override dicts `sweep` (or `sweep_<name>`) adds, in order."""
  attr = "sweep" if not sweep_name else f"sweep_{sweep_name}"
  fn: Callable | None = getattr(module, attr, None)
  if fn is None:
    available = sorted(a for a in dir(module) if a == "sweep" or a.startswith("sweep_"))
    raise AttributeError(f"{module.__file__} has no {attr}(add); it has {available}.")
  runs: list[dict[str, Any]] = []
  fn(lambda **overrides: runs.append(dict(overrides)))
  return runs


def expand(config_arg: str, workdir_root: str, sweep_name: str | None = None,
           common: Sequence[tuple[str, Any]] = ()) -> list[Run]:
  """All runs of a sweep, validated against the experiment's config.

  Args:
    config_arg: "experiments/sudoku.py" or "experiments/sudoku.py:cpu".
    workdir_root: parent of the runs' workdirs (local or gs://).
    sweep_name: None for `sweep`, else `sweep_<name>`.
    common: (key, value) overrides applied to every run before its own (e.g.
      data.data_dir); not part of the slug.

  Returns:
    The runs, index 0..n-1.
  """
  path, variant = split_config_arg(config_arg)
  module = load_experiment(path)
  config_arg = portable_config_arg(path, variant)
  config = module.get_config(variant)
  root = str(workdir_root).rstrip("/")
  if "://" not in root:  # runs start elsewhere (the repository root)
    root = str(pathlib.Path(root).resolve())
  runs = []
  for index, own in enumerate(collect(module, sweep_name)):
    overrides = dict(common)
    overrides.update(own)
    for key, value in overrides.items():
      _check_override(config, key, value)
    name = f"{index}_{slug(own)}"
    runs.append(Run(index=index, name=name, config=config_arg, overrides=overrides,
                    workdir=f"{root}/{name}"))
  return runs


def write_manifest(run: Run) -> epath.Path:
  workdir = epath.Path(run.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / MANIFEST
  path.write_text(json.dumps(run.manifest(), indent=2) + "\n")  # keeps override order
  return path


def parse_common(items: Sequence[str]) -> list[tuple[str, Any]]:
  """["data.data_dir=/x", "seed=1"] -> [("data.data_dir", "/x"), ("seed", 1)]."""
  pairs = []
  for item in items:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--set={item!r}: write key=value.")
    pairs.append((key.strip(), _parse_scalar(text)))
  return pairs


def _parse_scalar(text: str) -> Any:
  lowered = text.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text
