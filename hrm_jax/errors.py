"""What a user sees when a command fails: the one map from exceptions to messages.

Every command line (`hrm_jax.main`, `solve`, `visualize`, `convert`) ends a
failure through `fail(tool, exc)`: the problem and its fix on one or two lines
of stderr, `tool: error: ...`, and an exit status:

  2  usage: the command cannot work as typed (flags, config fields, variants,
     a config that does not fit the workdir being resumed, a cluster
     environment without its launcher);
  1  runtime: the world got in the way (bad data, a full disk, permissions,
     an unreadable checkpoint, a diverging run);
  130 / 143  interrupted by SIGINT / SIGTERM before anything could be saved.

The full traceback is printed only with `--verbosity=1` or `HRM_JAX_TRACEBACK=1`
(the message says so). An exception this map does not know is a bug, and keeps
its traceback. `tool_logging` is the shared prologue of the tools: warnings and
errors only, library chatter filtered.
"""
from __future__ import annotations

import dataclasses
import errno
import linecache
import logging as std_logging
import os
import re
import sys
import traceback
from typing import NoReturn

from absl import flags
from absl import logging

from hrm_jax import log_filters

TRACEBACK_ENV = "HRM_JAX_TRACEBACK"
RUNTIME, USAGE = 1, 2
# Long messages (a list of mismatching parameters) are cut to this many lines.
MAX_LINES = 8


class UsageError(ValueError):
  """A command line that cannot work as typed; the message names the fix."""


def first_line(exc: BaseException, limit: int = 300) -> str:
  """The first line of an error message, cut: tensorstore's and TFDS's run to pages."""
  text = str(exc).strip().splitlines()
  line = text[0] if text else ""
  return line if len(line) <= limit else line[:limit] + "..."


@dataclasses.dataclass(frozen=True)
class Failure:
  message: str
  exit_code: int


_DISK_FULL = re.compile(r"No space left on device|os_error_code='?(28|122)'?|"
                        r"OS error 28|Disk quota exceeded")
_DENIED = re.compile(r"Permission denied|PERMISSION_DENIED|Read-only file system|"
                     r"os_error_code='?(13|30)'?")
_QUOTED_PATH = re.compile(r'(?:local file|Failed writing:|writing:) "([^"]+)"')


def _path_in(text: str) -> str | None:
  """The file a tensorstore/orbax message names, cut at the run's checkpoints/."""
  found = _QUOTED_PATH.findall(text)
  if not found:
    return None
  path = found[-1]
  cut = re.search(r"^(.*?/checkpoints)/", path)
  return cut.group(1) if cut else path


def _disk_full(where: str | None) -> str:
  place = f" while writing {where}" if where else ""
  return (f"No space left on the device{place}. Free space there (or choose another "
          "--workdir / config.data.data_dir) and rerun the same command: it resumes "
          "from the last complete checkpoint.")


def _denied(where: str | None) -> str:
  place = f" for {where}" if where else ""
  return (f"Permission denied{place}: choose a --workdir (or config.data.data_dir) you "
          "can write, or fix the directory's permissions.")


def _os_error(exc: OSError) -> Failure:
  where = exc.filename if exc.filename is not None else None
  if exc.errno in (errno.ENOSPC, errno.EDQUOT):
    return Failure(_disk_full(where), RUNTIME)
  if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM,
                                                       errno.EROFS):
    return Failure(_denied(where), RUNTIME)
  if isinstance(exc, FileNotFoundError) and where is not None:
    return Failure(f"No such file or directory: {where}.", RUNTIME)
  if isinstance(exc, NotADirectoryError) and where is not None:
    return Failure(f"Not a directory: {where} (a path component is a file).", RUNTIME)
  return Failure(str(exc), RUNTIME)


def explain(exc: BaseException) -> Failure | None:
  """The message and exit status for `exc`, or None for an unexpected error (a
  bug: the caller shows its traceback)."""
  # Imported here: the tools import this module before anything heavy.
  from hrm_jax import checkpoint, memory_fit, preemption, workdir  # pylint: disable=import-outside-toplevel
  from hrm_jax.data import errors as data_errors  # pylint: disable=import-outside-toplevel

  if isinstance(exc, KeyboardInterrupt):
    return Failure("Interrupted (Ctrl-C) before a checkpoint could be saved; rerun the "
                   "same command to resume from the last checkpoint.", 128 + 2)
  if isinstance(exc, preemption.Interrupted):
    return Failure(f"Stopped: {exc} before training started (nothing to save); rerun "
                   "the same command to start again.", exc.exit_code)
  if isinstance(exc, (UsageError, flags.Error)):
    return Failure(str(exc), USAGE)
  if isinstance(exc, (checkpoint.CheckpointMismatchError, checkpoint.WeightsOnlyError)):
    return Failure(str(exc), USAGE)
  if isinstance(exc, OSError):
    return _os_error(exc)
  text = str(exc)
  if isinstance(exc, (data_errors.DataError, checkpoint.CorruptCheckpointError,
                      workdir.WorkdirError, memory_fit.DoesNotFitError,
                      FloatingPointError)):
    return Failure(text, RUNTIME)
  if type(exc).__name__ in ("InferenceError", "SolveError"):  # hrm_jax.inference
    return Failure(text, RUNTIME)
  # tensorstore (checkpoint arrays) reports OS errors inside its own messages.
  if _DISK_FULL.search(text):
    return Failure(_disk_full(_path_in(text)), RUNTIME)
  if _DENIED.search(text):
    return Failure(_denied(_path_in(text)), RUNTIME)
  if type(exc) is ValueError and _raised_by_us(exc):  # pylint: disable=unidiomatic-typecheck
    # Our own checks of config values (e.g. a batch that does not divide the
    # devices) raise plain ValueErrors that name the field and the fix; one
    # from a library or a builtin is unexpected (a bug, or a check we lack).
    return Failure(text, USAGE)
  return None


def _raised_by_us(exc: BaseException) -> bool:
  """Whether `exc` came from a `raise` statement in hrm_jax or experiments/."""
  tb = exc.__traceback__
  if tb is None:
    return True  # constructed, not raised: a message someone wrote for a user
  while tb.tb_next is not None:
    tb = tb.tb_next
  filename = tb.tb_frame.f_code.co_filename
  ours = os.sep + "hrm_jax" + os.sep in filename or (
      os.sep + "experiments" + os.sep in filename)
  return ours and linecache.getline(filename, tb.tb_lineno).strip().startswith("raise")


def _want_traceback() -> bool:
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    return True
  try:
    return flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1
  except (KeyError, flags.Error):
    return False


def _clip(message: str) -> str:
  lines = message.strip().splitlines() or [""]
  if len(lines) <= MAX_LINES + 2:
    return "\n".join(lines)
  return "\n".join(lines[:MAX_LINES] + [
      f"  ... {len(lines) - MAX_LINES} more lines ({TRACEBACK_ENV}=1 shows them all)"])


def fail(tool: str, exc: BaseException, *, hint: bool = True,
         default_code: int | None = None, hard_exit: bool = False) -> NoReturn:
  """Prints `tool: error: <message>` for `exc` and exits with its status.

  Must be called from an `except` block. An exception `explain` does not know
  is re-raised (its traceback is the bug report), unless `default_code` is
  given: the caller caught it on purpose and its first argument is the message.

  Args:
    tool: the command's name, e.g. "hrm_jax.main".
    exc: the exception being handled.
    hint: add a line that says how to get the traceback (runtime errors).
    default_code: exit status for exceptions `explain` does not know.
    hard_exit: leave with os._exit once the message is out (the trainer):
      after a failed checkpoint write, tensorstore's callbacks print a dozen
      "Event loop is closed" tracebacks while the interpreter shuts down. Our
      own clean-up (saves, writers) has run by then, in `finally` blocks.
  """
  failure = explain(exc)
  if failure is None:
    if default_code is None:
      raise exc
    failure = Failure(exc.args[0] if exc.args else repr(exc), default_code)
  verbose = _want_traceback()
  if verbose:
    traceback.print_exception(exc)
  message = str(failure.message) if verbose else _clip(str(failure.message))
  lines = message.splitlines() or [""]
  print(f"{tool}: error: {lines[0]}", *lines[1:], sep="\n", file=sys.stderr)
  if hint and not verbose and failure.exit_code == RUNTIME:
    print(f"{tool}: (the full traceback: rerun with {TRACEBACK_ENV}=1 or --verbosity=1)",
          file=sys.stderr)
  if hard_exit and not verbose:
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(failure.exit_code)  # pylint: disable=protected-access
  sys.stderr.flush()
  sys.exit(failure.exit_code)


def tool_logging(tool: str, argv, *, level: int = std_logging.ERROR) -> None:
  """The prologue of the tools (`solve`, `visualize`, `convert`).

  Rejects positional arguments; unless --verbosity is given, shows only our
  warnings and errors (and library records at `level` or above), so the answer
  is not buried under orbax's and TFDS's messages.
  """
  if len(argv) > 1:
    print(f"{tool}: error: unexpected arguments {argv[1:]} "
          "(every option is a --flag; --help lists them)", file=sys.stderr)
    sys.exit(USAGE)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(log_filters.QuietLibraries(level))
