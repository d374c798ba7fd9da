"""PyTorch tensor names -> our parameter tree (the HRM table is in convert.py).

Covers the three model families of the PyTorch repositories, which share one
naming scheme:
  HRM (sapientinc/HRM): H_level and L_level stacks, H_init and L_init.
  TRM (TinyRecursiveModels trm.py): the one L_level stack, H_init and L_init, no
    H_level; blocks hold `self_attn` or, with mlp_t, `mlp_t` (the token-mixing
    SwiGLU: inner.L_level.layers.i.mlp_t.{gate_up_proj,down_proj}.weight ->
    params/L_level/layers_i/mlp_t/{gate_up_proj,down_proj}/kernel, transposed).
  Transformer baseline (transformers_baseline.py): the one H_level stack and
    H_init only (no L_level, no L_init).
Prefixes `_orig_mod.` (torch.compile) and `model.` (the loss head) are stripped.

Kept apart from the conversion CLI so tests and tools can map state dicts without
orbax or flags.
"""
import re
from typing import Any, Mapping

import numpy as np

_PREFIXES = ("_orig_mod.", "model.")
_LAYER = re.compile(
    r"^inner\.(H|L)_level\.layers\.(\d+)\.(self_attn|mlp_t|mlp)\.(\w+)\.weight$")
_DIRECT = {
    "inner.embed_tokens.embedding_weight": (("embed_tokens", "embedding"), False),
    "inner.embed_pos.embedding_weight": (("embed_pos", "embedding"), False),
    "inner.lm_head.weight": (("lm_head", "kernel"), True),
    "inner.q_head.weight": (("q_head", "kernel"), True),
    "inner.q_head.bias": (("q_head", "bias"), False),
}
_IGNORED = ("rotary_emb.",)  # non-persistent caches, recomputed here


def strip_prefixes(name: str) -> str:
  changed = True
  while changed:
    changed = False
    for prefix in _PREFIXES:
      if name.startswith(prefix):
        name, changed = name[len(prefix):], True
  return name


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def torch_state_to_variables(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Returns {"params", "buffers", "puzzle_emb"} as float32 numpy arrays.

  Args:
    state_dict: name -> array (numpy, or anything `np.asarray` accepts).

  Raises:
    KeyError: naming a tensor this port does not know.
  """
  params, buffers, puzzle_emb = {}, {}, None
  for raw_name, value in state_dict.items():
    name = strip_prefixes(raw_name)
    array = np.asarray(value, dtype=np.float32)
    if any(token in name for token in _IGNORED):
      continue
    if name in _DIRECT:
      path, transpose = _DIRECT[name]
      _set(params, path, array.T if transpose else array)
    elif m := _LAYER.match(name):
      level, index, block, proj = m.groups()
      _set(params, (f"{level}_level", f"layers_{index}", block, proj, "kernel"), array.T)
    elif name in ("inner.H_init", "inner.L_init"):
      buffers[name.split(".")[-1]] = array
    elif name == "inner.puzzle_emb.weights":
      puzzle_emb = array
    else:
      raise KeyError(f"Unknown tensor {raw_name!r} (after stripping prefixes: {name!r}); "
                     "this converter knows HRM ACT v1, TRM and transformer-baseline "
                     "checkpoints only.")
  # Every family has H_init; those with an L_level stack (HRM, TRM) also L_init.
  required = ("H_init", "L_init") if "L_level" in params else ("H_init",)
  missing = [f"inner.{k}" for k in required if k not in buffers]
  if "embed_tokens" not in params:
    missing.append("inner.embed_tokens.embedding_weight")
  if missing:
    raise KeyError(f"State dict lacks {missing}: is this an HRM, TRM or "
                   "transformer-baseline ACT checkpoint?")
  return {"params": params, "buffers": buffers, "puzzle_emb": puzzle_emb}
