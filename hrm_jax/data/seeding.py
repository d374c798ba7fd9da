"""Deterministic random streams keyed by names, not by call order.

Every random draw in the data layer comes from `rng(seed, *keys)`, where the
keys say what the draw is for ("train", group 17, ...). Results therefore do
not depend on iteration order, worker count or platform: numpy's
SeedSequence + PCG64 are specified bit-for-bit.
"""

import zlib

import numpy as np


def _word(key) -> int:
  if isinstance(key, (int, np.integer)):
    if key < 0:
      raise ValueError(f"seed keys must be non-negative, got {key}")
    return int(key)
  return zlib.crc32(str(key).encode("utf-8"))


def seed_words(seed: int, *keys) -> list[int]:
  return [_word(seed)] + [_word(k) for k in keys]


def rng(seed: int, *keys) -> np.random.Generator:
  """A generator determined by (seed, keys); strings are hashed with CRC32."""
  return np.random.default_rng(seed_words(seed, *keys))
