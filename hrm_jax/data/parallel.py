"""Ordered, seeded fan-out of independent jobs over worker processes.

Generators call `ordered_map` with job ids 0, 1, 2, ... and keep the first
results that pass a filter. Because each job seeds itself from its id, the
output is identical for any number of workers. Workers are forked, or
spawned once JAX is imported (forking JAX's threads can deadlock).

Workers never outlive the generation: each watches its parent and exits when
the parent is gone (even after a SIGKILL, which runs no clean-up), and a
consumer that stops early or is interrupted (Ctrl-C, SIGTERM turned into an
exception by `hrm_jax.preemption.raise_on_sigterm`) terminates them instead
of waiting for the chunks in flight.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import sys
import threading
import time
from typing import Callable, Iterator

# How often a worker checks that its parent is still alive.
_PARENT_POLL_S = 0.5


def default_workers() -> int:
  return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable, args: Iterator, num_workers: int,
                chunk: int = 32) -> Iterator:
  """Yields fn(a) for a in args, in order, computed by `num_workers` processes.

  Consumes `args` lazily (a bounded window of chunks is in flight), so an
  infinite iterator is fine; stop iterating the result to stop the work.
  `fn` must be a picklable top-level function. If the worker pool cannot
  start (e.g. "spawn" from a script without an `if __name__ == "__main__"`
  guard), the work runs in this process instead: same results, slower.
  """
  args = iter(args)
  if num_workers <= 1:
    yield from map(fn, args)
    return
  replay = []  # Arguments handed out before the first result came back.
  started = False
  try:
    for result in _pool_map(fn, args, num_workers, chunk, replay):
      started = True
      yield result
  except concurrent.futures.process.BrokenProcessPool:
    if started:
      raise
    logging.warning("hrm_jax.data: worker processes failed to start; "
                    "generating in this process (same output, slower).")
    yield from map(fn, itertools.chain(replay, args))


def _context():
  # Forking a process that runs JAX's threads can deadlock; spawn then.
  return multiprocessing.get_context("spawn" if "jax" in sys.modules
                                     else "fork")


def _exit_with_parent(parent_pid: int) -> None:
  """Worker initializer: a daemon thread ends the worker once its parent is
  gone (re-parented processes see another parent id). Portable, unlike
  Linux's PR_SET_PDEATHSIG, and immune to which parent thread started us."""

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(_PARENT_POLL_S)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _terminate_workers(ex: concurrent.futures.ProcessPoolExecutor) -> None:
  """Stops the pool now: pending chunks are cancelled, running ones killed."""
  processes = list((getattr(ex, "_processes", None) or {}).values())
  ex.shutdown(wait=False, cancel_futures=True)
  for process in processes:
    if process.is_alive():
      process.terminate()
  for process in processes:
    process.join(timeout=5)


def _pool_map(fn, args, num_workers, chunk, replay):
  ex = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=_context(), initializer=_exit_with_parent,
      initargs=(os.getpid(),))
  finished = False
  try:
    window = collections.deque()

    def submit():
      batch = list(itertools.islice(args, chunk))
      if batch:
        replay.extend(batch)
        window.append(ex.submit(_run_chunk, fn, batch))

    for _ in range(2 * num_workers):
      submit()
    while window:
      results = window.popleft().result()
      replay.clear()  # Only needed until the pool has proven it works.
      submit()
      yield from results
    finished = True
  finally:
    if finished:
      ex.shutdown(wait=True)
    else:  # the consumer stopped early, failed or was interrupted
      _terminate_workers(ex)


def _run_chunk(fn, batch):
  return [fn(a) for a in batch]
