"""How the array shapes of two pytrees differ, said the same way everywhere.

Used wherever saved weights meet a model: restoring a checkpoint
(`checkpoint.check_fits`), loading a workdir's weights (`workdir.load_weights`),
`config.init_from` (`train.init_from`) and converting a PyTorch state dict
(`torch_import.check_shapes`). Trees are compared in orbax's serialised form
(custom nodes such as optax namedtuples become dicts/lists keyed by field name or
index), so a saved item's metadata and an abstract target compare directly.
"""
from __future__ import annotations

from typing import Any, Mapping

import orbax.checkpoint as ocp

Shape = tuple[int, ...]


def flat_shapes(tree: Any) -> dict[str, Shape]:
  """`"a/b/0/c" -> shape` for every array-like leaf, in orbax's key scheme."""
  serialized = ocp.tree.serialize_tree(tree, keep_empty_nodes=True)
  flat = ocp.tree.to_flat_dict(serialized)
  return {"/".join(str(k) for k in path): tuple(leaf.shape)
          for path, leaf in flat.items() if hasattr(leaf, "shape")}


def diff_shapes(have: Mapping[str, Shape], want: Mapping[str, Shape]
                ) -> list[tuple[str, Shape | None, Shape | None]]:
  """`(path, have_shape, want_shape)` for every path whose shape differs between
  two flat `path -> shape` maps, sorted by path; None where a side lacks it."""
  return [(path, have.get(path), want.get(path))
          for path in sorted(have.keys() | want.keys())
          if have.get(path) != want.get(path)]


def mismatches(have: Any, want: Any, have_label: str, want_label: str,
               prefix: str = "") -> list[str]:
  """One indented line per differing leaf of two trees, e.g.
  `  state/params/w: checkpoint shape (16, 4) != target shape (24, 4)`."""
  lines = []
  for path, h, w in diff_shapes(flat_shapes(have), flat_shapes(want)):
    path = prefix + path
    if h is None:
      lines.append(f"  {path}: missing in {have_label} ({want_label} shape {w})")
    elif w is None:
      lines.append(f"  {path}: in {have_label} (shape {h}) but not in {want_label}")
    else:
      lines.append(f"  {path}: {have_label} shape {h} != {want_label} shape {w}")
  return lines
