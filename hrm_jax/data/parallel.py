"""Ordered, seeded fan-out of independent jobs over worker processes.

Generators call `ordered_map` with job ids 0, 1, 2, ... and keep the first
results that pass a filter. Because each job seeds itself from its id, the
output is identical for any number of workers. Workers are started with
"spawn": forking a process that already runs JAX threads can deadlock.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import os
from typing import Callable, Iterator


def default_workers() -> int:
  return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable, args: Iterator, num_workers: int,
                chunk: int = 32) -> Iterator:
  """Yields fn(a) for a in args, in order, computed by `num_workers` processes.

  Consumes `args` lazily (a bounded window of chunks is in flight), so an
  infinite iterator is fine; stop iterating the result to stop the work.
  `fn` must be a picklable top-level function.
  """
  if num_workers <= 1:
    yield from map(fn, args)
    return
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as ex:
    window = collections.deque()
    args = iter(args)

    def submit():
      batch = list(itertools.islice(args, chunk))
      if batch:
        window.append(ex.submit(_run_chunk, fn, batch))

    for _ in range(2 * num_workers):
      submit()
    try:
      while window:
        results = window.popleft().result()
        submit()
        yield from results
    finally:
      for fut in window:
        fut.cancel()


def _run_chunk(fn, batch):
  return [fn(a) for a in batch]
