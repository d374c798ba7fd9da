"""From the original PyTorch code's files to our model config and tree.

Reads a released state dict (`load_torch_state_dict`, torch only here) and the
reference run's `all_config.yaml` (`read_reference_config`), infers the model
config from the tensors' shapes (`infer_config`: the weights fix the hidden
size, layers, vocabulary, puzzle-embedding table and position type; the
recurrence, the heads and, with RoPE, the sequence length come from the yaml,
overrides or defaults), and checks that every tensor has exactly the shape our
model initialises (`check_shapes`), so a wrong guess fails here instead of
producing garbage later. The name mapping itself is `torch_names.py`'s;
writing the result as a workdir is `convert.py`'s.
"""
import dataclasses
import os
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import numpy as np

from hrm_jax import models, tree_shapes


REFERENCE_CONFIG_FILE = "all_config.yaml"

# Fields a reference run's config fixes that the tensors do not: warned about
# when they fall back to the family's defaults.
_UNDETERMINED = ("H_cycles", "L_cycles", "num_heads", "halt_max_steps",
                 "halt_exploration_prob", "puzzle_emb_len", "pos_encodings")

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
  """Model config fields found in the reference's `all_config.yaml` (HRM or TRM).

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
  # Every scalar entry; `infer_config` keeps those the model family has (the
  # reference's pydantic configs use our field names).
  fields = {k: v for k, v in arch.items()
            if k not in ("name", "loss") and not isinstance(v, (Mapping, list))}
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


def arch_of(converted: Mapping[str, Any]) -> str:
  """The model family of converted weights, from which networks they hold:
  HRM has H_level and L_level, TRM one L_level, the transformer baseline one
  H_level."""
  params = converted["params"]
  levels = {level for level in ("H_level", "L_level") if level in params}
  if levels == {"H_level", "L_level"}:
    return "hrm"
  if levels == {"L_level"}:
    return "trm"
  if levels == {"H_level"}:
    return "transformer"
  raise ValueError("The state dict has neither H_level nor L_level layers: not an HRM, "
                   "TRM or transformer-baseline checkpoint.")


def _fields_from_tensors(converted: Mapping[str, Any], arch: str) -> dict[str, Any]:
  """The config fields that the tensor shapes determine, and `num_positions`
  (L, when the weights fix it: learned positions or token mixing)."""
  params = converted["params"]
  vocab_size, hidden_size = params["embed_tokens"]["embedding"].shape
  fields = {"vocab_size": int(vocab_size), "hidden_size": int(hidden_size)}
  for level in ("H", "L"):
    if f"{level}_level" in params:
      fields[f"{level}_layers"] = _layer_count(params[f"{level}_level"], level)
  table = converted["puzzle_emb"]
  if table is None:
    fields["puzzle_emb_ndim"] = 0
  else:
    if table.ndim != 2:
      raise ValueError(f"puzzle_emb.weights has shape {table.shape}; expected "
                       "[num_puzzle_identifiers, puzzle_emb_ndim].")
    fields["num_puzzle_identifiers"], fields["puzzle_emb_ndim"] = map(int, table.shape)
  if arch == "trm":
    first = params["L_level"].get("layers_0", {})
    fields["mlp_t"] = "mlp_t" in first
    if fields["mlp_t"]:  # the token-mixing weights are [L, 2 * width]
      fields["num_positions"] = int(first["mlp_t"]["gate_up_proj"]["kernel"].shape[0])
  if "embed_pos" in params:
    fields["pos_encodings"] = "learned"
    fields["num_positions"] = int(params["embed_pos"]["embedding"].shape[0])
  elif fields.get("mlp_t"):
    fields["pos_encodings"] = "none"
  elif arch != "trm":  # a TRM without weights for positions: rope or none (config)
    fields["pos_encodings"] = "rope"
  return fields


def infer_config(converted: Mapping[str, Any],
                 reference: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None):
  """The model config of converted weights, and where each field came from.

  The family comes from the networks the weights hold (`arch_of`). Precedence:
  `overrides` > the tensors > `reference` (all_config.yaml) > the family's
  defaults. A reference value that contradicts the tensors is an error: it
  means the yaml belongs to another run.

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
  arch = arch_of(converted)
  family = models.get(arch)
  known = {f.name: f for f in dataclasses.fields(family.config)}
  fields, provenance = {}, {}
  for name, value in (reference or {}).items():
    if name in known:
      fields[name], provenance[name] = value, "all_config.yaml"
  from_tensors = _fields_from_tensors(converted, arch)
  num_positions = from_tensors.pop("num_positions", None)
  for name, value in from_tensors.items():
    if name in fields and _coerce(known[name], fields[name]) != value:
      raise ValueError(
          f"all_config.yaml says {name}={fields[name]!r} but the checkpoint's tensors "
          f"imply {name}={value!r}: the yaml belongs to another run (or pass "
          "--config_yaml pointing at the right one).")
    fields[name], provenance[name] = value, "tensors"
  for name, value in (overrides or {}).items():
    if name not in known:
      raise ValueError(f"--override {name!r} is not a field of the {arch!r} family; "
                       f"known: {sorted(known)}.")
    fields[name], provenance[name] = value, "override"
  if "num_puzzle_identifiers" not in fields:  # no puzzle embedding: unused
    fields["num_puzzle_identifiers"], provenance["num_puzzle_identifiers"] = 1, "default"
  fields = {k: _coerce(known[k], v) for k, v in fields.items()}
  if num_positions is not None:  # L = seq_len + prefix tokens
    if "puzzle_emb_len" in known:  # TRM: an explicit prefix length
      prefix = fields.get("puzzle_emb_len", known["puzzle_emb_len"].default)
    else:  # HRM and the baseline: ceil(ndim / hidden) prefix tokens
      prefix = -(fields["puzzle_emb_ndim"] // -fields["hidden_size"])
    if "seq_len" in fields and fields["seq_len"] != num_positions - prefix:
      raise ValueError(
          f"seq_len={fields['seq_len']} ({provenance['seq_len']}) but the checkpoint's "
          f"tensors cover {num_positions} positions = seq_len {num_positions - prefix} "
          f"+ {prefix} prefix tokens.")
    fields["seq_len"], provenance["seq_len"] = num_positions - prefix, "tensors"
  if "seq_len" not in fields:
    raise ValueError(
        "The sequence length is not in the weights of a RoPE model and no "
        f"all_config.yaml gave it: pass --override=seq_len=N ({_SEQ_LEN_HINT}).")
  for name, field in known.items():
    if name not in fields and field.default is not dataclasses.MISSING:
      provenance[name] = "default"
  defaulted = [k for k in _UNDETERMINED if provenance.get(k) == "default"]
  if defaulted:
    logging.warning("Using the %s defaults (not determinable from the weights) for: "
                    "%s. Give all_config.yaml or --override if the run differed.",
                    arch, ", ".join(defaulted))
  config = family.config(**fields)
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


def check_shapes(config, converted: Mapping[str, Any]) -> None:
  """Raises ValueError unless the weights are exactly what `config` initialises.

  Catches both wrong guesses for fields the weights do not determine
  (num_heads does not, but expansion does via the MLP width) and damaged
  checkpoints (a missing or reshaped tensor).
  """
  model = models.build(config)
  expected = jax.eval_shape(lambda: models.family_of(config).init_variables(
      model, jax.random.key(0)))
  problems = tree_shapes.mismatches(
      {k: converted[k] for k in ("params", "buffers")},
      {k: expected[k] for k in ("params", "buffers")},
      "the checkpoint", "a model with this config")
  if config.puzzle_emb_ndim > 0:
    table = converted["puzzle_emb"]
    want_table = (config.num_puzzle_identifiers, config.puzzle_emb_ndim)
    if table is None or tuple(table.shape) != want_table:
      problems.append(f"  puzzle_emb: checkpoint shape "
                      f"{None if table is None else tuple(table.shape)} != expected "
                      f"{want_table}")
  if problems:
    raise ValueError(
        f"The checkpoint's tensors do not fit a {config.ARCH} model with the inferred "
        f"config {config}:\n" + "\n".join(problems) +
        "\nFix the config (all_config.yaml or --override=FIELD=VALUE; e.g. "
        "expansion sets the MLP width) or check the checkpoint file.")
