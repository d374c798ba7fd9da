"""Model families, chosen by `config.model.arch`: the one place config becomes a model.

A family is one module in this package that registers a `Family` at import:
its config dataclass (the single source of the family's field names and
defaults), its linen module (parameters and single-step pieces), its
`segment` function (one deep-supervision segment with its gradient boundary)
and an analytic FLOP count. Everything above the models (the ACT wrapper, the
train step, the tools) asks this registry instead of naming a family; adding
one is a new module plus an entry in `_MODULES`.

Dimension letters used by every family: B batch, S grid tokens, P
puzzle-embedding prefix tokens, L = P + S tokens, D hidden, E puzzle-embedding
width, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import jax

# arch -> module that defines (and registers) the family.
_MODULES = {
    "hrm": "hrm_jax.models.hrm",
    "trm": "hrm_jax.models.trm",
    "transformer": "hrm_jax.models.transformer",
}
# Fields every family config takes from the dataset, never from config.model.
DATA_FIELDS = ("seq_len", "vocab_size", "num_puzzle_identifiers")


@dataclasses.dataclass(frozen=True)
class Family:
  """What the rest of the code may know about a model family.

  Attributes:
    arch: the `config.model.arch` value.
    config: frozen dataclass of hyperparameters (reference field names);
      instances are hashable and are the model's `config` attribute.
    inner: the linen module class, built as `inner(config)`.
    segment: `segment(model, variables, z_H, z_L, inputs_BxS, rows_BxE) ->
      ((z_H, z_L) without gradient, logits_BxSxV, q_halt_B, q_continue_B)`.
    init_variables: `init_variables(model, rng) -> {"params", "buffers"}`.
    train_step_flops: `(config, global_batch) -> matmul FLOPs of one step`.
    calls_per_segment: `config -> network calls of one segment` (the NFE unit:
      an evaluation's NFE per puzzle is segments run x this x samples).
  """
  arch: str
  config: type
  inner: type
  segment: Callable[..., Any]
  init_variables: Callable[..., Any]
  train_step_flops: Callable[[Any, int], float]
  calls_per_segment: Callable[[Any], int]


@dataclasses.dataclass(frozen=True)
class ACTRules:
  """How a family halts (each reference's spec §2); a config's `act_rules`.

  Attributes:
    halt_on_q_halt_alone: True: halt when q_halt > 0 (TRM); False: when
      q_halt > q_continue (HRM, the transformer baseline).
    q_continue_target: train q_continue on a target bootstrapped from a second,
      gradient-free segment (HRM only; TRM's `no_ACT_continue` drops it).
    train_halting: the Q head (with exploration) halts rows during training.
    eval_halting: it also halts rows at evaluation, without being asked
      (`config.eval.adaptive_halting` asks for every family).
  """
  halt_on_q_halt_alone: bool
  q_continue_target: bool
  train_halting: bool = True
  eval_halting: bool = False


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
  """Called once by each family module at import."""
  _REGISTRY[family.arch] = family
  return family


def archs() -> tuple[str, ...]:
  return tuple(_MODULES)


def get(arch: str) -> Family:
  """The family registered under `arch`; unknown names list the known ones."""
  if arch not in _MODULES:
    raise ValueError(f"config.model.arch={arch!r} is not a model family; use one of "
                     f"{sorted(_MODULES)}.")
  if arch not in _REGISTRY:
    importlib.import_module(_MODULES[arch])
  return _REGISTRY[arch]


def family_of(config: Any) -> Family:
  """The family of a model config instance."""
  return get(type(config).ARCH)


def _settable_fields(family: Family) -> dict[str, dataclasses.Field]:
  return {f.name: f for f in dataclasses.fields(family.config)
          if f.name not in DATA_FIELDS}


def default_fields(arch: str) -> dict[str, Any]:
  """`{"arch": arch, field: default, ...}` for every field config.model may set."""
  fields = {"arch": arch}
  for name, field in _settable_fields(get(arch)).items():
    fields[name] = field.default
  return fields


def make_config(model_fields: Mapping[str, Any], shape: Any) -> Any:
  """The family config from `config.model` plus the dataset's shape.

  Args:
    model_fields: `config.model` (a ConfigDict or dict) with an `arch` entry
      (default "hrm") and any of the family's fields.
    shape: anything with `vocab_size`, `seq_len` and `num_puzzle_identifiers`
      (a `data.DatasetShape` or `data.DatasetMetadata`).

  Raises:
    ValueError: unknown arch, or a field the family does not have (the message
      names the field, the family and, when it exists, the family that has it).
  """
  fields = dict(model_fields.items())
  arch = fields.pop("arch", "hrm")
  family = get(arch)
  allowed = _settable_fields(family)
  unknown = sorted(set(fields) - set(allowed))
  if unknown:
    owners = []
    for name in unknown:
      others = [a for a in _MODULES if a != arch and name in _settable_fields(get(a))]
      owners.append(f"{name!r}" + (f" (a field of {', '.join(others)})" if others else ""))
    raise ValueError(
        f"config.model has field(s) {', '.join(owners)} that the {arch!r} family "
        f"(config.model.arch) does not have; its fields: {sorted(allowed)}. To switch "
        "families use the experiment's variant (e.g. experiments/sudoku.py:trm), "
        "which sets every field of the family.")
  data = {k: int(getattr(shape, k)) for k in DATA_FIELDS}
  return family.config(**data, **fields)


def build(config: Any):
  """The linen module of a family config."""
  return family_of(config).inner(config)


def count_params(params) -> int:
  """Trainable parameters (buffers and the puzzle table are not params)."""
  return sum(int(p.size) for p in jax.tree.leaves(params))
