"""Maps a PyTorch HRM state dict onto our variables, and converts checkpoints.

    python -m hrm_jax.convert --torch_checkpoint=PATH --out=DIR [--config_yaml=PATH]

PyTorch names (optionally prefixed `_orig_mod.` and/or `model.`, as saved by the
compiled `ACTLossHead`) map to our tree as follows; linear weights are [out, in]
in PyTorch and [in, out] here, so they are transposed:

  inner.embed_tokens.embedding_weight        params/embed_tokens/embedding
  inner.embed_pos.embedding_weight           params/embed_pos/embedding
  inner.lm_head.weight                       params/lm_head/kernel (T)
  inner.q_head.{weight,bias}                 params/q_head/{kernel (T),bias}
  inner.{H,L}_level.layers.i.self_attn.{qkv_proj,o_proj}.weight
                                             params/{H,L}_level/layers_i/self_attn/.../kernel (T)
  inner.{H,L}_level.layers.i.mlp.{gate_up_proj,down_proj}.weight
                                             params/{H,L}_level/layers_i/mlp/.../kernel (T)
  inner.H_init, inner.L_init                 buffers/H_init, buffers/L_init
  inner.puzzle_emb.weights                   the separate puzzle-embedding table

Converting a released checkpoint (`sapientinc/HRM-checkpoint-*`, spec §6.3):

    python -m hrm_jax.convert --torch_checkpoint=.../step_N --out=DIR

writes DIR as an ordinary workdir (`hrm_jax/workdir.py`): a weights-only
checkpoint DIR/checkpoints/0 ({"params", "buffers", "puzzle_emb"}, float32),
DIR/config.json (`model` = the inferred config, `data.family` = the puzzle
family, from --family or the vocabulary and length), DIR/dataset.json
(vocabulary, length, puzzle ids; their names from --identifiers, the training
dataset's identifiers.json) and DIR/conversion.json (where each field came
from). So `solve --workdir=DIR` and `--config.init_from=DIR` take it as they
take one of our runs: one checkpoint format, one loader.

The weights fix the shapes (hidden size, layers, vocabulary, puzzle-embedding
table, learned positions) but not the recurrence (H_cycles, L_cycles,
halt_max_steps), the number of heads (qkv is [3D, D] whatever it is) or, with
RoPE, the sequence length. Those come from the reference's `all_config.yaml`
next to the checkpoint (or --config_yaml), then from --override=FIELD=VALUE,
then from the reference defaults. Everything is finally checked against the
shapes our model would initialise, so a wrong guess fails loudly here instead
of producing garbage later.
"""
import dataclasses
import json
import logging as std_logging
import os
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from hrm_jax import checkpoint, data, errors, models, torch_import, workdir
from hrm_jax.torch_names import torch_state_to_variables



PROVENANCE_FILE = "conversion.json"
REFERENCE_CONFIG_FILE = torch_import.REFERENCE_CONFIG_FILE


def _family(config, family: str | None) -> str | None:
  """The puzzle family: as given, else the one whose encoding fits the model."""
  if family is not None:
    data.family(family)  # unknown names fail with the list
    return family
  matches = data.families.matching(config.vocab_size, config.seq_len)
  if len(matches) > 1:
    raise ValueError(f"Vocabulary {config.vocab_size} at length {config.seq_len} fits "
                     f"the families {matches}: pass --family.")
  if not matches:
    logging.warning("No puzzle family encodes vocabulary %d at length %d: the model is "
                    "usable as config.init_from, `solve` needs --family.",
                    config.vocab_size, config.seq_len)
  return matches[0] if matches else None


def save_converted(out_dir: str | os.PathLike, config,
                   converted: Mapping[str, Any],
                   provenance: Mapping[str, str] | None = None,
                   overwrite: bool = False, family: str | None = None,
                   identifiers: list[str] | None = None) -> epath.Path:
  """Writes the converted weights as a workdir (see the module docstring).

  Everything is stored in float32 (bf16 buffers are exact in it); loading casts
  the buffers to the config's forward dtype.
  """
  out = checkpoint.absolute(out_dir)
  if out.exists() and any(out.iterdir()):
    if not overwrite:
      raise FileExistsError(f"{os.fspath(out)!r} exists and is not empty; pass "
                            "--overwrite to replace it.")
    out.rmtree()
  if identifiers is not None and len(identifiers) != config.num_puzzle_identifiers:
    raise ValueError(
        f"The identifiers name {len(identifiers)} puzzles but the checkpoint's "
        f"puzzle-embedding table has {config.num_puzzle_identifiers} rows: they belong "
        "to another dataset.")
  family = _family(config, family)
  out.mkdir(parents=True, exist_ok=True)
  table = converted["puzzle_emb"]
  if table is None:  # no puzzle embedding: rows of width 0 keep one code path
    table = np.zeros((config.num_puzzle_identifiers, 0), np.float32)
  weights = {"params": converted["params"], "buffers": converted["buffers"],
             "puzzle_emb": table}
  ckpt = checkpoint.Checkpointer(out, every_steps=1, async_save=False)
  try:
    ckpt.save_weights(0, jax.tree.map(lambda a: np.asarray(a, np.float32), weights))
  finally:
    ckpt.close()
  fields = dataclasses.asdict(config)
  model_fields = {"arch": config.ARCH, **{k: v for k, v in fields.items()
                                          if k not in models.DATA_FIELDS}}
  run_config = {"model": model_fields, "data": {} if family is None else {"family": family}}
  workdir.write_json_atomically(out / workdir.CONFIG_FILE, run_config)
  workdir.write_dataset_info(out, data.DatasetMetadata(
      vocab_size=config.vocab_size, seq_len=config.seq_len,
      num_puzzle_identifiers=config.num_puzzle_identifiers, pad_id=0, ignore_label_id=0,
      blank_identifier_id=0, total_groups=0, mean_puzzle_examples=1.0), identifiers)
  (out / PROVENANCE_FILE).write_text(json.dumps(dict(provenance or {}), indent=2,
                                                sort_keys=True))
  return out


def read_identifiers(path: str) -> list[str]:
  """The reference's identifiers.json: a JSON list, id -> name."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"identifiers file {path!r} not found.")
  try:
    with open(path) as f:
      names = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"identifiers file {path!r} is not valid JSON: {e}") from None
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(f"identifiers file {path!r} must hold a JSON list of names.")
  return names


def convert_state_dict(state_dict: Mapping[str, Any], out_dir: str | os.PathLike, *,
                       reference: Mapping[str, Any] | None = None,
                       overrides: Mapping[str, Any] | None = None,
                       overwrite: bool = False, family: str | None = None,
                       identifiers: list[str] | None = None):
  """State dict (name -> numpy array) to a converted workdir in `out_dir`.

  This is the whole CLI minus reading files, so tests can call it without torch.

  Raises:
    KeyError: an unknown tensor name (named in the message).
    ValueError: contradicting or insufficient config information.
  """
  converted = torch_state_to_variables(state_dict)
  config, provenance = torch_import.infer_config(converted, reference, overrides)
  save_converted(out_dir, config, converted, provenance, overwrite=overwrite,
                 family=family, identifiers=identifiers)
  return config


def _parse_overrides(items: list[str] | None) -> dict[str, str]:
  overrides = {}
  for item in items or ():
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"--override={item!r}: expected FIELD=VALUE.")
    overrides[name.strip()] = value.strip()
  return overrides


def convert_file(torch_checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                 config_yaml: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 overwrite: bool = False, family: str | None = None,
                 identifiers_path: str | None = None):
  """The CLI: a released `step_N` file (+ its all_config.yaml) to `out_dir`."""
  if not os.path.isfile(torch_checkpoint):
    raise FileNotFoundError(f"No PyTorch checkpoint file at {os.fspath(torch_checkpoint)!r}.")
  if config_yaml is None:
    sibling = os.path.join(os.path.dirname(os.path.abspath(torch_checkpoint)),
                           REFERENCE_CONFIG_FILE)
    if os.path.isfile(sibling):
      config_yaml = sibling
      logging.info("Reading the run config from %s.", sibling)
    else:
      logging.warning("No %s next to the checkpoint: H_cycles, L_cycles, num_heads "
                      "and halt_max_steps fall back to the reference defaults unless "
                      "given by --override.", REFERENCE_CONFIG_FILE)
  reference = torch_import.read_reference_config(config_yaml) if config_yaml else None
  state = torch_import.load_torch_state_dict(torch_checkpoint)
  identifiers = read_identifiers(identifiers_path) if identifiers_path else None
  return convert_state_dict(state, out_dir, reference=reference, overrides=overrides,
                            overwrite=overwrite, family=family, identifiers=identifiers)


def _define_flags() -> None:
  """Defined only when run as a program, so importing this module (the tests,
  `solve`) never collides with another tool's --out."""
  flags.DEFINE_string("torch_checkpoint", None,
                      "A PyTorch HRM state dict (e.g. a released step_N file).")
  flags.DEFINE_string("out", None, "Output directory (created).")
  flags.DEFINE_string("config_yaml", None, "The reference run's all_config.yaml; "
                      "default: the one next to the checkpoint, if any.")
  flags.DEFINE_multi_string("override", None,
                            "FIELD=VALUE for an HRMConfig field, e.g. seq_len=81; "
                            "wins over all_config.yaml, the tensors and defaults.")
  flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")
  flags.DEFINE_string("family", None, "Puzzle family (sudoku, maze, arc); default: the "
                      "one whose encoding fits the vocabulary and length.")
  flags.DEFINE_string("identifiers", None, "The training dataset's identifiers.json "
                      "(ARC: the puzzle names `solve` needs to pick a task's embeddings).")


def main(argv):
  # orbax logs every save step at INFO.
  errors.tool_logging("hrm_jax.convert", argv, level=std_logging.WARNING)
  f = flags.FLAGS
  try:
    if not f.torch_checkpoint or not f.out:
      raise errors.UsageError("--torch_checkpoint and --out are required.")
    config = convert_file(f.torch_checkpoint, f.out, f.config_yaml,
                          _parse_overrides(f.override), f.overwrite, f.family,
                          f.identifiers)
  except (OSError, ImportError, KeyError, TypeError, ValueError) as e:
    # A state dict of another shape fails as KeyError/TypeError: the user's input.
    errors.fail("hrm_jax.convert", e, hint=False, default_code=errors.RUNTIME)
  print(f"Wrote {f.out}: {config}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
