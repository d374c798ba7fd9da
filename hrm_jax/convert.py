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

writes DIR/variables (an orbax StandardCheckpointer tree {"params", "buffers",
"puzzle_emb"}, all float32), DIR/hrm_config.json (the HRMConfig fields) and
DIR/conversion.json (where each field came from). `load_converted(DIR)` reads it
back for `solve`/evaluation.

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
import os
import sys
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hrm_jax import checkpoint
from hrm_jax.models import hrm
# Re-exported: the name mapping lives in torch_names.py.
from hrm_jax.torch_names import _DIRECT, _LAYER, strip_prefixes, torch_state_to_variables  # pylint: disable=unused-import


# ---------------------------------------------------------------------------
# Checkpoint conversion.
# ---------------------------------------------------------------------------

VARIABLES_DIR = "variables"
CONFIG_FILE = "hrm_config.json"
PROVENANCE_FILE = "conversion.json"
REFERENCE_CONFIG_FILE = "all_config.yaml"

# `arch` fields of the reference's all_config.yaml that are HRMConfig fields
# under the same name (the reference's pydantic model has them all).
_REFERENCE_ARCH_FIELDS = (
    "H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size", "expansion",
    "num_heads", "pos_encodings", "rms_norm_eps", "rope_theta", "puzzle_emb_ndim",
    "halt_max_steps", "halt_exploration_prob", "forward_dtype", "seq_len",
    "vocab_size", "num_puzzle_identifiers")

# Sequence lengths of the released checkpoints' datasets, for the error message
# when a RoPE checkpoint leaves seq_len undetermined.
_SEQ_LEN_HINT = "81 for Sudoku, 900 for Maze 30x30 and ARC"


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict as float32 numpy arrays, on the CPU.

  torch is imported here only: the rest of the package never needs it. bf16
  tensors (the reference keeps H_init/L_init in bf16) have no numpy dtype, so
  every tensor goes through float32 first, which represents bf16 exactly.

  Raises:
    FileNotFoundError: no such file.
    ImportError: torch is not installed.
    TypeError: the file does not hold a name -> tensor mapping.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No PyTorch checkpoint file at {path!r}.")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "Reading PyTorch checkpoints needs torch, which hrm_jax does not install "
        "by default: pip install 'hrm_jax[torch]' (the CPU build is enough)."
    ) from e
  # weights_only: a state dict is plain tensors, and this refuses to run the
  # arbitrary pickled code a tampered download could carry.
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise TypeError(f"{path!r} holds a {type(state).__name__}, not a state dict "
                    "(a mapping of tensor names to tensors).")
  arrays = {}
  for name, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise TypeError(f"{path!r}: entry {name!r} is a {type(value).__name__}, not a "
                      "tensor; is this a state dict of an HRM model?")
    arrays[name] = value.detach().to(torch.float32).cpu().numpy()
  return arrays


def read_reference_config(path: str | os.PathLike) -> dict[str, Any]:
  """HRMConfig fields found in the reference's `all_config.yaml`.

  The reference dumps its whole PretrainConfig there: the model fields sit under
  `arch`, the loss under `arch.loss.loss_type`. Unknown keys are ignored.

  Raises:
    FileNotFoundError: no such file.
    ImportError: PyYAML is missing.
    ValueError: the file has no `arch` mapping.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"No reference config at {os.fspath(path)!r}.")
  try:
    import yaml  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading {os.fspath(path)!r} needs PyYAML (pip install pyyaml); or leave "
        "out --config_yaml, move the file away and pass --override=FIELD=VALUE "
        "for H_cycles, L_cycles, num_heads, halt_max_steps, ...") from e
  document = yaml.safe_load(path.read_text())
  arch = document.get("arch") if isinstance(document, Mapping) else None
  if not isinstance(arch, Mapping):
    raise ValueError(f"{os.fspath(path)!r} has no `arch:` section; is it the "
                     "all_config.yaml of an HRM run?")
  fields = {k: arch[k] for k in _REFERENCE_ARCH_FIELDS if k in arch}
  loss = arch.get("loss")
  if isinstance(loss, Mapping) and "loss_type" in loss:
    fields["loss_type"] = loss["loss_type"]
  return fields


def _layer_count(level_params: Mapping[str, Any], level: str) -> int:
  indices = sorted(int(k[len("layers_"):]) for k in level_params)
  if indices != list(range(len(indices))):
    raise ValueError(f"{level} layers are numbered {indices}; expected 0..n-1 "
                     "without gaps (a truncated or merged checkpoint?).")
  return len(indices)


def _fields_from_tensors(converted: Mapping[str, Any]) -> dict[str, Any]:
  """The HRMConfig fields that the tensor shapes determine."""
  params = converted["params"]
  vocab_size, hidden_size = params["embed_tokens"]["embedding"].shape
  fields = {"vocab_size": int(vocab_size), "hidden_size": int(hidden_size)}
  for level in ("H", "L"):
    fields[f"{level}_layers"] = _layer_count(params.get(f"{level}_level", {}), level)
  table = converted["puzzle_emb"]
  if table is None:
    fields["puzzle_emb_ndim"] = 0
  else:
    if table.ndim != 2:
      raise ValueError(f"puzzle_emb.weights has shape {table.shape}; expected "
                       "[num_puzzle_identifiers, puzzle_emb_ndim].")
    fields["num_puzzle_identifiers"], fields["puzzle_emb_ndim"] = map(int, table.shape)
  if "embed_pos" in params:
    fields["pos_encodings"] = "learned"
    num_positions = int(params["embed_pos"]["embedding"].shape[0])
    prefix = -(fields["puzzle_emb_ndim"] // -fields["hidden_size"])
    fields["seq_len"] = num_positions - prefix
  else:
    fields["pos_encodings"] = "rope"
  return fields


def infer_config(converted: Mapping[str, Any],
                 reference: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None
                 ) -> tuple[hrm.HRMConfig, dict[str, str]]:
  """The HRMConfig of converted weights, and where each field came from.

  Precedence: `overrides` > the tensors > `reference` (all_config.yaml) >
  HRMConfig defaults. A reference value that contradicts the tensors is an
  error: it means the yaml belongs to another run.

  Args:
    converted: output of `torch_state_to_variables`.
    reference: fields from `read_reference_config`, if any.
    overrides: field -> value, applied last (values may be strings).

  Returns:
    (config, provenance) with provenance[field] in {"tensors", "all_config.yaml",
    "override", "default"}.

  Raises:
    ValueError: contradictions, an undetermined seq_len, or weights whose
      shapes do not match the inferred config.
  """
  known = {f.name: f for f in dataclasses.fields(hrm.HRMConfig)}
  fields, provenance = {}, {}
  for name, value in (reference or {}).items():
    fields[name], provenance[name] = value, "all_config.yaml"
  for name, value in _fields_from_tensors(converted).items():
    if name in fields and _coerce(known[name], fields[name]) != value:
      raise ValueError(
          f"all_config.yaml says {name}={fields[name]!r} but the checkpoint's tensors "
          f"imply {name}={value!r}: the yaml belongs to another run (or pass "
          "--config_yaml pointing at the right one).")
    fields[name], provenance[name] = value, "tensors"
  for name, value in (overrides or {}).items():
    if name not in known:
      raise ValueError(f"--override {name!r} is not an HRMConfig field; known: "
                       f"{sorted(known)}.")
    fields[name], provenance[name] = value, "override"
  if "num_puzzle_identifiers" not in fields:  # no puzzle embedding: unused
    fields["num_puzzle_identifiers"], provenance["num_puzzle_identifiers"] = 1, "default"
  if "seq_len" not in fields:
    raise ValueError(
        "The sequence length is not in the weights of a RoPE model and no "
        f"all_config.yaml gave it: pass --override=seq_len=N ({_SEQ_LEN_HINT}).")
  fields = {k: _coerce(known[k], v) for k, v in fields.items()}
  for name, field in known.items():
    if name not in fields and field.default is not dataclasses.MISSING:
      provenance[name] = "default"
  defaulted = [k for k in _REFERENCE_ARCH_FIELDS if provenance.get(k) == "default"]
  if defaulted:
    logging.warning("Using HRMConfig defaults (not determinable from the weights) "
                    "for: %s. Give all_config.yaml or --override if the run "
                    "differed.", ", ".join(defaulted))
  config = hrm.HRMConfig(**fields)
  check_shapes(config, converted)
  return config, provenance


def _coerce(field: dataclasses.Field, value: Any) -> Any:
  """Casts a yaml/flag value to the field's type ("4" -> 4, 4.0 -> 4, "true")."""
  try:
    if field.type is bool and isinstance(value, str):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError("expected true or false")
      return value.lower() in ("true", "1")
    if field.type is int and not isinstance(value, bool):
      as_float = float(value)
      if not as_float.is_integer():
        raise ValueError("expected an integer")
      return int(as_float)
    if field.type is float:
      return float(value)
  except ValueError as e:
    raise ValueError(f"{field.name}={value!r}: {e}.") from e
  return value


def _flat(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in leaves}


def check_shapes(config: hrm.HRMConfig, converted: Mapping[str, Any]) -> None:
  """Raises ValueError unless the weights are exactly what `config` initialises.

  Catches both wrong guesses for fields the weights do not determine
  (num_heads does not, but expansion does via the MLP width) and damaged
  checkpoints (a missing or reshaped tensor).
  """
  if config.hidden_size % config.num_heads:
    raise ValueError(f"hidden_size={config.hidden_size} is not divisible by "
                     f"num_heads={config.num_heads}.")
  model = hrm.HRMInner(config)
  expected = jax.eval_shape(lambda: hrm.init_variables(model, jax.random.key(0)))
  problems = []
  for item in ("params", "buffers"):
    for path, have, want in checkpoint.diff_shapes(_flat(converted[item]),
                                                   _flat(expected[item])):
      if have is None:
        problems.append(f"  {item}/{path}: missing from the checkpoint "
                        f"(expected shape {want})")
      elif want is None:
        problems.append(f"  {item}/{path}: shape {have} is in the checkpoint "
                        "but not in a model with this config")
      else:
        problems.append(f"  {item}/{path}: checkpoint shape {have} != expected {want}")
  if config.puzzle_emb_ndim > 0:
    table = converted["puzzle_emb"]
    want_table = (config.num_puzzle_identifiers, config.puzzle_emb_ndim)
    if table is None or tuple(table.shape) != want_table:
      problems.append(f"  puzzle_emb: checkpoint shape "
                      f"{None if table is None else tuple(table.shape)} != expected "
                      f"{want_table}")
  if problems:
    raise ValueError(
        "The checkpoint's tensors do not fit an HRM with the inferred config "
        f"{config}:\n" + "\n".join(problems) +
        "\nFix the config (all_config.yaml or --override=FIELD=VALUE; e.g. "
        "expansion sets the MLP width) or check the checkpoint file.")


def save_converted(out_dir: str | os.PathLike, config: hrm.HRMConfig,
                   converted: Mapping[str, Any],
                   provenance: Mapping[str, str] | None = None,
                   overwrite: bool = False) -> epath.Path:
  """Writes the orbax tree and the config JSON files; returns the variables dir.

  Everything is stored in float32 (bf16 buffers are exact in it); `load_converted`
  casts the buffers to the config's forward dtype.
  """
  out = epath.Path(out_dir)
  if out.exists() and any(out.iterdir()):
    if not overwrite:
      raise FileExistsError(f"{os.fspath(out)!r} exists and is not empty; pass "
                            "--overwrite to replace it.")
    out.rmtree()
  out.mkdir(parents=True, exist_ok=True)
  tree = {"params": converted["params"], "buffers": converted["buffers"]}
  if converted["puzzle_emb"] is not None:
    tree["puzzle_emb"] = converted["puzzle_emb"]
  tree = _map_arrays(lambda a: np.asarray(a, np.float32), tree)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out / VARIABLES_DIR, tree)
    checkpointer.wait_until_finished()
  (out / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2))
  (out / PROVENANCE_FILE).write_text(json.dumps(dict(provenance or {}), indent=2,
                                                sort_keys=True))
  return out / VARIABLES_DIR


def _map_arrays(fn, tree):
  if isinstance(tree, Mapping):
    return {k: _map_arrays(fn, v) for k, v in tree.items()}
  return fn(tree)


def convert_state_dict(state_dict: Mapping[str, Any], out_dir: str | os.PathLike, *,
                       reference: Mapping[str, Any] | None = None,
                       overrides: Mapping[str, Any] | None = None,
                       overwrite: bool = False) -> hrm.HRMConfig:
  """State dict (name -> numpy array) to a converted checkpoint in `out_dir`.

  This is the whole CLI minus reading files, so tests can call it without torch.

  Raises:
    KeyError: an unknown tensor name (named in the message).
    ValueError: contradicting or insufficient config information.
  """
  converted = torch_state_to_variables(state_dict)
  config, provenance = infer_config(converted, reference, overrides)
  save_converted(out_dir, config, converted, provenance, overwrite=overwrite)
  return config


def load_converted(directory: str | os.PathLike, **config_overrides):
  """Loads a `convert` output for evaluation or `solve`.

  Args:
    directory: the --out directory of the converter.
    **config_overrides: HRMConfig fields to replace after loading, e.g.
      `halt_max_steps` for inference-time scaling or `forward_dtype`; fields
      that change weight shapes fail the shape check.

  Returns:
    (config, variables, puzzle_emb_table): variables = {"params" (float32),
    "buffers" (forward dtype)} as jax arrays, the table float32 [P, E] or None
    when the model has no puzzle embedding.
  """
  root = epath.Path(directory)
  config_path = root / CONFIG_FILE
  if not config_path.exists() or not (root / VARIABLES_DIR).exists():
    raise FileNotFoundError(
        f"{os.fspath(root)!r} is not a converted HRM checkpoint (expected "
        f"{CONFIG_FILE} and {VARIABLES_DIR}/ inside; make one with "
        "`python -m hrm_jax.convert`).")
  fields = json.loads(config_path.read_text())
  known = {f.name: f for f in dataclasses.fields(hrm.HRMConfig)}
  unknown = sorted(set(fields) - set(known))
  if unknown:
    raise ValueError(f"{os.fspath(config_path)!r} has fields {unknown} that this "
                     "version's HRMConfig does not know.")
  fields.update({k: _coerce(known[k], v) if k in known else v
                 for k, v in config_overrides.items()})
  config = hrm.HRMConfig(**fields)
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(root / VARIABLES_DIR)
  tree = _map_arrays(lambda a: np.asarray(a, np.float32), tree)
  converted = {"params": tree["params"], "buffers": tree["buffers"],
               "puzzle_emb": tree.get("puzzle_emb")}
  check_shapes(config, converted)
  variables = {
      "params": _map_arrays(jnp.asarray, converted["params"]),
      "buffers": _map_arrays(lambda a: jnp.asarray(a, config.dtype),
                             converted["buffers"]),
  }
  table = converted["puzzle_emb"]
  return config, variables, None if table is None else jnp.asarray(table)


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
                 overwrite: bool = False) -> hrm.HRMConfig:
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
  reference = read_reference_config(config_yaml) if config_yaml else None
  state = load_torch_state_dict(torch_checkpoint)
  return convert_state_dict(state, out_dir, reference=reference, overrides=overrides,
                            overwrite=overwrite)


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f["verbosity"].present:  # orbax logs every save step at INFO
    logging.set_verbosity(logging.WARNING)
  if not f.torch_checkpoint or not f.out:
    raise app.UsageError("--torch_checkpoint and --out are required.")
  try:
    config = convert_file(f.torch_checkpoint, f.out, f.config_yaml,
                          _parse_overrides(f.override), f.overwrite)
  except (FileNotFoundError, FileExistsError, ImportError, KeyError, TypeError,
          ValueError) as e:
    message = e.args[0] if e.args else repr(e)
    sys.exit(f"hrm_jax.convert: error: {message}")
  print(f"Wrote {f.out}: {config}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
