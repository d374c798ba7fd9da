"""One logging filter for our command-line entry points.

orbax logs ~30 INFO lines per checkpoint save and TFDS announces every custom
data configuration; on a console they bury the lines a user runs the command for.
"""
import logging

_NOISY_PATHS = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/")


class QuietLibraries(logging.Filter):
  """Drops library records below `min_level`; ours always pass."""

  def __init__(self, min_level: int = logging.WARNING):
    super().__init__()
    self._min_level = min_level

  def filter(self, record):
    return record.levelno >= self._min_level or not any(
        n in record.pathname for n in _NOISY_PATHS)
