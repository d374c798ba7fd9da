"""Builds a dataset into a data dir (never use the `tfds build` CLI: it needs
TensorFlow).

  python -m hrm_jax.data.build --dataset=sudoku --data_dir=~/hrm_jax_data \
      --set=source=csv:/path/to/sudoku-extreme --set=num_aug=1000

`--set=field=value` overrides any field of `default_config(dataset)` (values
are parsed as the field's type). Prints the TFDS name to open it with
`tfds.data_source(name, data_dir=...)`, plus per-split sizes.
"""

from absl import app
from absl import flags

from hrm_jax.data import builders
from hrm_jax.data import config as config_lib
from hrm_jax.data import loader

_DATASET = flags.DEFINE_enum("dataset", None, ["sudoku", "maze", "arc"],
                             "Puzzle family.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Output data dir "
                                "(default: the config's ~/hrm_jax_data).")
_SET = flags.DEFINE_multi_string("set", [], "field=value config override.")


def _parse(current, text: str):
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise app.UsageError(f"expected a boolean, got {text!r}")
    return text.lower() in ("true", "1")
  return type(current)(text)


def main(argv):
  del argv
  cfg = config_lib.default_config(_DATASET.value)
  if _DATA_DIR.value:
    cfg.data_dir = _DATA_DIR.value
  for item in _SET.value:
    key, _, value = item.partition("=")
    if key not in cfg:
      raise app.UsageError(f"unknown field {key!r}; fields: {sorted(cfg)}")
    cfg[key] = _parse(cfg[key], value)
  builder = loader.prepare(cfg)
  name = f"{builder.name}/{builder.builder_config.name}"
  print(f"dataset: tfds.data_source({name!r}, data_dir={str(cfg.data_dir)!r})")
  for split in loader.SPLITS:
    data = builders.read_split(builder, split)
    m = data.metadata
    print(f"{split}: {data.num_examples} examples, "
          f"{len(data.puzzle_identifiers)} puzzles, {m.total_groups} groups; "
          f"vocab {m.vocab_size}, seq {m.seq_len}, "
          f"{m.num_puzzle_identifiers} identifiers")


if __name__ == "__main__":
  app.run(main)
