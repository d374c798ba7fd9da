"""When to stop and save: termination signals and JAX's preemption sync point.

Schedulers and TPU maintenance send SIGTERM before killing a job; a user
presses Ctrl-C. Either way the loop should finish the step it is in, save a
checkpoint and exit, so that rerunning the same command resumes exactly.

* One process: a Python handler records the signal (`StopFlag`); the loop
  polls it at step boundaries.
* Several processes: every process must take part in the save, at the same
  step. JAX's preemption service (started by `jax.distributed.initialize`)
  catches SIGTERM itself and agrees on a step across processes; the loop asks
  `Checkpointer.reached_preemption(step)`, which wraps
  `multihost_utils.reached_preemption_sync_point`. No Python SIGTERM handler is
  installed there (it would replace the service's), and no collective runs per
  step.
"""
import signal
import threading

import jax
from absl import logging


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
    logging.warning("Received signal %d: will save a checkpoint and stop at "
                    "the next step boundary.", signum)
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
  """Records SIGTERM (one process) instead of dying; returns the flag.

  Must be called from the main thread (a Python signal rule). On several
  processes SIGTERM is left to JAX's preemption service (see the module
  docstring), so by default nothing is intercepted there.
  """
  if signals is None:
    signals = (signal.SIGTERM,) if jax.process_count() == 1 else ()
  return StopFlag(signals)
