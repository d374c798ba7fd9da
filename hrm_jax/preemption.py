"""When to stop and save: termination signals and JAX's preemption sync point.

Schedulers and TPU maintenance send SIGTERM before killing a job; a user
presses Ctrl-C (SIGINT). Either way the loop should finish the step it is in,
save a checkpoint and exit, so that rerunning the same command resumes exactly.

* One process, in the train loop: a Python handler records SIGTERM or SIGINT
  (`StopFlag`); the loop polls it at step boundaries, saves and returns. After
  a first Ctrl-C, SIGINT gets its default action back, so a second Ctrl-C ends
  the process at once (the work since the last checkpoint is then lost).
* One process, outside the loop (data build, compilation, evaluation set-up):
  `raise_on_sigterm` turns SIGTERM into `Interrupted`, as Python already turns
  SIGINT into KeyboardInterrupt, so `finally` blocks run: generator workers are
  stopped and a half-built dataset is removed (`hrm_jax.data`).
* Several processes: every process must take part in the save, at the same
  step. JAX's preemption service (started by `jax.distributed.initialize`)
  catches SIGTERM itself and agrees on a step across processes; the loop asks
  `Checkpointer.reached_preemption(step)`, which wraps
  `multihost_utils.reached_preemption_sync_point`. No Python SIGTERM handler is
  installed there (it would replace the service's), and no collective runs per
  step.
"""
import contextlib
import signal
import threading
from typing import Iterator

import jax
from absl import logging


class Interrupted(BaseException):
  """SIGTERM arrived while no train loop was there to save (set-up, data build).

  A BaseException, as KeyboardInterrupt: `except Exception` in library code
  must not swallow it.
  """

  def __init__(self, signum: int):
    super().__init__(f"received {signal.Signals(signum).name}")
    self.signum = signum

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class StopFlag:
  """Callable that says whether a termination signal has arrived.

  The signal handler only sets a flag; the train loop polls it at a step
  boundary, saves a checkpoint and returns normally.
  """

  def __init__(self, signals: tuple[int, ...]):
    self._event = threading.Event()
    self.signal = None
    self._previous = {s: signal.signal(s, self._handle) for s in signals}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      # The next Ctrl-C takes the default action (the process ends at once):
      # a user who presses it twice does not want to wait for the save.
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      logging.warning("Received %s: will save a checkpoint and stop at the next step "
                      "boundary (press Ctrl-C again to abort at once, losing the work "
                      "since the last checkpoint).", name)
    else:
      logging.warning("Received %s: will save a checkpoint and stop at the next step "
                      "boundary.", name)
    if self.signal is None:
      self.signal = signum
    self._event.set()

  def __call__(self) -> bool:
    """True once a handled signal has arrived."""
    return self._event.is_set()

  def uninstall(self) -> None:
    """Restores the handlers that were installed before."""
    for s, previous in self._previous.items():
      signal.signal(s, previous)


def install(signals: tuple[int, ...] | None = None) -> StopFlag:
  """Records SIGTERM and SIGINT (one process) instead of dying; returns the flag.

  Must be called from the main thread (a Python signal rule). On several
  processes the signals are left to JAX's preemption service (see the module
  docstring), so by default nothing is intercepted there.
  """
  if signals is None:
    signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else ()
  return StopFlag(signals)


def _raise_interrupted(signum, frame):
  del frame
  raise Interrupted(signum)


@contextlib.contextmanager
def raise_on_sigterm(enabled: bool = True) -> Iterator[None]:
  """Within the block SIGTERM raises `Interrupted` (one process; see the module
  docstring). `enabled=False` (several processes) changes nothing."""
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _raise_interrupted)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
