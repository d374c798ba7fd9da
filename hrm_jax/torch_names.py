"""PyTorch HRM tensor names -> our parameter tree (the mapping table is in convert.py).

Kept apart from the conversion CLI so tests and tools can map state dicts without
orbax or flags.
"""
import re
from typing import Any, Mapping

import numpy as np

_PREFIXES = ("_orig_mod.", "model.")
_LAYER = re.compile(r"^inner\.(H|L)_level\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.weight$")
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
                     "this converter knows HRM ACT v1 checkpoints only.")
  missing = [k for k in ("H_init", "L_init") if k not in buffers]
  if missing or "embed_tokens" not in params:
    raise KeyError(f"State dict lacks {missing or ['inner.embed_tokens.embedding_weight']}: "
                   "is this an HRM ACT v1 checkpoint?")
  return {"params": params, "buffers": buffers, "puzzle_emb": puzzle_emb}
