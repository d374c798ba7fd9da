"""One logging filter for our command-line entry points.

orbax logs ~30 INFO lines per checkpoint save, TFDS announces every custom
data configuration (twice a run: once per split) and that a fresh build
directory has no dataset_info.json yet, and a failing asynchronous save makes
orbax's threads and asyncio log the same traceback a dozen times before the
error reaches us. On a console they bury the lines a user runs the command
for. `QuietLibraries` drops them; `--verbosity=1` (no filter) shows everything.
"""
import logging
import sys

_NOISY_PATHS = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/asyncio/",
                "/concurrent/futures/")
# Library messages that are noise at any level (TFDS logs them as warnings).
_NOISE = ("Using custom data configuration", "Variant folder %s has no %s")


class QuietLibraries(logging.Filter):
  """Drops library records below `min_level`, library noise, and library
  tracebacks (the error itself reaches our code, which reports it once); our
  own records always pass."""

  def __init__(self, min_level: int = logging.WARNING):
    super().__init__()
    self._min_level = min_level

  def filter(self, record):
    if not any(n in record.pathname for n in _NOISY_PATHS):
      return True
    if record.exc_info or record.levelno < self._min_level:
      return False
    message = str(record.msg)  # the format string: stable across arguments
    return not any(n in message for n in _NOISE)


def _is_closed_loop_noise(exc_type, exc) -> bool:
  return exc_type is RuntimeError and str(exc) == "Event loop is closed"


def quiet_closed_event_loop() -> None:
  """After a failed asynchronous checkpoint write, tensorstore's completion
  callbacks reach orbax's event loop once it is closed, and each prints a
  "RuntimeError: Event loop is closed" traceback (through sys.unraisablehook
  from its threads, or sys.excepthook); the write error itself reaches our
  code and is reported once. Drops exactly those; every other exception
  prints as before."""
  if getattr(sys.unraisablehook, "_hrm_jax_quiet", False):
    return
  previous_excepthook, previous_unraisablehook = sys.excepthook, sys.unraisablehook

  def excepthook(exc_type, exc, tb):
    if not _is_closed_loop_noise(exc_type, exc):
      previous_excepthook(exc_type, exc, tb)

  def unraisablehook(unraisable):
    if not _is_closed_loop_noise(unraisable.exc_type, unraisable.exc_value):
      previous_unraisablehook(unraisable)

  unraisablehook._hrm_jax_quiet = True  # pylint: disable=protected-access
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
