"""Where scalar metrics go: JSON lines, TensorBoard, the console.

One small interface (`write_scalars`, `write_hparams`, `flush`, `close`) with one class per
sink, so the trainer writes each metric dict once and does not care where it
ends up. `writers_for_process` gives process 0 all sinks and every other
process a no-op, because in a multi-host run every process computes the same
(globally reduced) metrics and only one copy should be written.

`metrics.jsonl` is the durable record: plain text, one object per line,
appended to on resume, readable without TensorFlow (`read_jsonl_metrics`, used
by the visualiser). TensorBoard is for watching a run live.

TensorBoard also gets the run's config as hparams (its HPARAMS tab compares
runs by them) and the trainer's `perf/steps_per_s`, `perf/examples_per_s`.

`ProgressReporter` turns step timing into the one console line a human reads:
step, loss, accuracy, steps/s, examples/s and ETA.
"""
import abc
import json
import os
import math
import time
from typing import Any, Callable, Iterable, Mapping

from absl import logging
from etils import epath
import numpy as np

Scalars = Mapping[str, Any]

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_float(value: Any) -> float:
  """Python float of a Python/NumPy/JAX scalar (fetches from device)."""
  return float(np.asarray(value))


class MetricWriter(abc.ABC):
  """A sink for scalar metrics keyed by training step."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Scalars) -> None:
    """Records `scalars` (name -> number) at `step`."""

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Records the run's hyperparameters (flat name -> number, bool or str);
    sinks without such a notion ignore them (the JSONL record of the config is
    WORKDIR/config.json)."""
    del hparams

  def flush(self) -> None:
    """Makes everything written so far durable/visible."""

  def close(self) -> None:
    """Flushes and releases resources; the writer is unusable afterwards."""
    self.flush()


class NoOpWriter(MetricWriter):
  """Drops everything: the writer of processes other than 0."""

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    del step, scalars


class JsonlWriter(MetricWriter):
  """Appends `{"step": step, **scalars}` lines to WORKDIR/metrics.jsonl.

  Appending (never truncating) keeps the history of a resumed run in one
  file; steps written between the last checkpoint and a crash appear twice,
  and readers keep the last occurrence if they need unique steps.
  Non-finite values are written as JSON `NaN`/`Infinity` (Python's json reads
  them back) so a diverging run is recorded rather than crashing the writer.
  """

  def __init__(self, workdir: epath.PathLike):
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._path = workdir / JSONL_NAME
    # Object stores (gs://) have no append: gcsfs silently truncates. There the
    # whole file is kept in memory and rewritten on every flush.
    self._remote = "://" in os.fspath(self._path)
    if self._remote:
      self._lines = (self._path.read_text().splitlines(keepends=True)
                     if self._path.exists() else [])
    else:
      self._file = self._path.open("a")

  @property
  def path(self) -> epath.Path:
    return self._path

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    record = {"step": int(step)}
    record.update({k: _to_float(v) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    if self._remote:
      self._lines.append(line)
    else:
      self._file.write(line)

  def flush(self) -> None:
    if self._remote:
      self._path.write_text("".join(self._lines))
    else:
      self._file.flush()

  def close(self) -> None:
    self.flush()
    if not self._remote:
      self._file.close()


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files in WORKDIR/tensorboard, via tensorboardX."""

  def __init__(self, workdir: epath.PathLike):
    # Imported here so that processes that never write TensorBoard (non-zero
    # processes, tools) do not pay for it.
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._logdir = epath.Path(workdir) / TENSORBOARD_DIR
    self._writer = tensorboardX.SummaryWriter(logdir=str(self._logdir))

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, _to_float(value), global_step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The HPARAMS-tab records, in this run's own event file (tensorboardX's
    `add_hparams` would open a second run directory); the metrics it lists
    are the eval scalars written under the same tags."""
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
              for k, v in hparams.items()}
    metrics = {tag: 0.0 for tag in ("eval/exact_accuracy", "eval/accuracy", "eval/loss")}
    writer = self._writer._get_file_writer()  # pylint: disable=protected-access
    for record in summary.hparams(values, metrics):
      writer.add_summary(record)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def format_scalars(step: int, scalars: Scalars) -> str:
  """`step 10: a=1, b=0.5` with 6 significant digits, keys sorted."""
  parts = ", ".join(f"{k}={_to_float(v):.6g}" for k, v in sorted(
      scalars.items()))
  return f"step {int(step)}: {parts}"


class MultiWriter(MetricWriter):
  """Forwards every call to each of several writers."""

  def __init__(self, writers: Iterable[MetricWriter]):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_hparams(hparams)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
  """`{"opt.lr": 1e-4, ...}` of a ConfigDict or dict: numbers, bools and strings
  as they are, anything else (tuples, None) as its str."""
  items = config.items() if hasattr(config, "items") else []
  flat = {}
  for key, value in items:
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      flat.update(flatten_config(value, name + "."))
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    else:
      flat[name] = str(value)
  return flat


def writers_for_process(workdir: epath.PathLike, process_index: int,
                        tensorboard: bool = True) -> MetricWriter:
  """JSONL + TensorBoard on process 0, a no-op elsewhere (the console line is
  `ProgressReporter`'s).

  We do not use clu's writers: `clu.metric_writers` imports TensorFlow, which
  this project never installs.

  Args:
    workdir: run directory (local or gs://).
    process_index: `jax.process_index()`.
    tensorboard: also write TensorBoard events.
  """
  if process_index != 0:
    return NoOpWriter()
  writers: list[MetricWriter] = [JsonlWriter(workdir)]
  if tensorboard:
    writers.append(TensorBoardWriter(workdir))
  return MultiWriter(writers)


def read_jsonl_metrics(workdir: epath.PathLike) -> list[dict[str, Any]]:
  """All records of WORKDIR/metrics.jsonl in file order ([] if absent).

  A partially written last line (a crash mid-write) is skipped rather than
  failing the reader.

  Args:
    workdir: run directory.

  Returns:
    One dict per line, each with "step" and the scalars written with it.
  """
  path = epath.Path(workdir) / JSONL_NAME
  if not path.exists():
    return []
  records = []
  lines = path.read_text().splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i != len(lines) - 1:
        raise
      logging.warning("Skipping truncated last line of %s", path)
  return records


def format_duration(seconds: float) -> str:
  """`1d 02:03:04`, `02:03:04` or `n/a` for a non-finite/negative duration."""
  if not math.isfinite(seconds) or seconds < 0:
    return "n/a"
  seconds = int(round(seconds))
  days, seconds = divmod(seconds, 86400)
  hours, seconds = divmod(seconds, 3600)
  minutes, seconds = divmod(seconds, 60)
  clock = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
  return f"{days}d {clock}" if days else clock


def format_progress(step: int,
                    total_steps: int,
                    steps_per_sec: float | None,
                    examples_per_step: int,
                    loss: float | None = None,
                    accuracy: float | None = None) -> str:
  """One console line of training progress; a pure function of its inputs.

  Example: `step 120/1000 (12.0%) | loss 0.4321 | acc 0.8765 | 3.21 steps/s |
  1643 ex/s | ETA 00:04:34`. Unknown values (first report, no rate yet)
  print as `n/a`.

  Args:
    step: updates done.
    total_steps: updates in the run.
    steps_per_sec: measured rate, or None if not yet known.
    examples_per_step: global batch size.
    loss: latest training loss, if any.
    accuracy: latest training accuracy, if any.

  Returns:
    The formatted line.
  """
  pct = 100.0 * step / total_steps if total_steps > 0 else 0.0
  parts = [f"step {step}/{total_steps} ({pct:.1f}%)"]
  if loss is not None:
    parts.append(f"loss {loss:.4f}")
  if accuracy is not None:
    parts.append(f"acc {accuracy:.4f}")
  if steps_per_sec is None or not steps_per_sec > 0:
    parts += ["n/a steps/s", "n/a ex/s", "ETA n/a"]
  else:
    eta = max(0, total_steps - step) / steps_per_sec
    parts += [f"{steps_per_sec:.2f} steps/s",
              f"{steps_per_sec * examples_per_step:.0f} ex/s",
              f"ETA {format_duration(eta)}"]
  return " | ".join(parts)


class ProgressReporter:
  """Measures steps/s between calls and logs `format_progress` lines.

  The rate is measured from the previous report, so it includes everything
  the loop does (data, eval, checkpoints) — the honest number for an ETA.
  """

  def __init__(self,
               total_steps: int,
               examples_per_step: int,
               loss_key: str = "loss",
               accuracy_key: str = "accuracy",
               clock: Callable[[], float] = time.monotonic):
    """Creates the reporter.

    Args:
      total_steps: updates in the run.
      examples_per_step: global batch size.
      loss_key: metric shown as "loss" (e.g. "train/loss").
      accuracy_key: metric shown as "acc".
      clock: seconds source; injectable for tests.
    """
    self._total_steps = total_steps
    self._loss_key = loss_key
    self._accuracy_key = accuracy_key
    self._examples_per_step = examples_per_step
    self._clock = clock
    self._last: tuple[int, float] | None = None
    self.steps_per_sec: float | None = None

  def report(self, step: int, metrics: Scalars | None = None, log: bool = True) -> str:
    """Logs and returns the progress line for `step`.

    Args:
      step: updates done.
      metrics: optional scalars; the loss and accuracy keys are shown if
        present.
      log: log the line (False: only measure, e.g. on processes other than 0).

    Returns:
      The line; `steps_per_sec` holds the rate it shows (None on the first).
    """
    now = self._clock()
    rate = None
    if self._last is not None:
      last_step, last_time = self._last
      if step > last_step and now > last_time:
        rate = (step - last_step) / (now - last_time)
    self._last = (step, now)
    metrics = metrics or {}
    get = lambda k: _to_float(metrics[k]) if k in metrics else None
    self.steps_per_sec = rate
    line = format_progress(step, self._total_steps, rate,
                           self._examples_per_step, loss=get(self._loss_key),
                           accuracy=get(self._accuracy_key))
    if log:
      logging.info("%s", line)
    return line
