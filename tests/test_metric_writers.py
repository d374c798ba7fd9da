"""Tests of hrm_jax.metric_writers."""
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from hrm_jax import metric_writers as mw


def test_jsonl_writer_roundtrip_and_append_on_resume(tmp_path):
  writer = mw.JsonlWriter(tmp_path)
  writer.write_scalars(1, {"loss": jnp.float32(0.5), "acc": np.float64(0.25)})
  writer.write_scalars(2, {"loss": 0.4, "lr": jnp.array(1e-4)})
  writer.close()
  # A resumed run opens the same file again and appends.
  writer = mw.JsonlWriter(tmp_path)
  writer.write_scalars(3, {"loss": float("nan")})
  writer.close()

  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 3
  assert json.loads(lines[0]) == {"step": 1, "loss": 0.5, "acc": 0.25}
  records = mw.read_jsonl_metrics(tmp_path)
  assert [r["step"] for r in records] == [1, 2, 3]
  assert records[1]["lr"] == pytest.approx(1e-4)
  assert math.isnan(records[2]["loss"])


def test_read_jsonl_metrics_missing_and_truncated(tmp_path):
  assert not mw.read_jsonl_metrics(tmp_path)
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
  assert mw.read_jsonl_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]


def test_tensorboard_writer_writes_event_file(tmp_path):
  writer = mw.TensorBoardWriter(tmp_path)
  writer.write_scalars(5, {"train/loss": jnp.float32(1.5)})
  writer.close()
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1
  assert events[0].stat().st_size > 0
  # The tag is in the (uncompressed protobuf) event record.
  assert b"train/loss" in events[0].read_bytes()


class _Recorder(mw.MetricWriter):

  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append(("write", step, dict(scalars)))

  def flush(self):
    self.calls.append(("flush",))

  def close(self):
    self.calls.append(("close",))


def test_multi_writer_forwards_everything():
  a, b = _Recorder(), _Recorder()
  multi = mw.MultiWriter([a, b])
  multi.write_scalars(3, {"x": 1.0})
  multi.flush()
  multi.close()
  want = [("write", 3, {"x": 1.0}), ("flush",), ("close",)]
  assert a.calls == want and b.calls == want


def test_writers_for_process(tmp_path):
  noop = mw.writers_for_process(tmp_path / "p1", process_index=1)
  assert isinstance(noop, mw.NoOpWriter)
  noop.write_scalars(1, {"x": 1.0})
  noop.close()
  assert not (tmp_path / "p1").exists()

  writer = mw.writers_for_process(tmp_path / "p0", process_index=0)
  writer.write_scalars(1, {"x": 1.0})
  writer.flush()
  assert mw.read_jsonl_metrics(tmp_path / "p0") == [{"step": 1, "x": 1.0}]
  writer.close()
  assert (tmp_path / "p0" / "tensorboard").is_dir()


def test_format_duration():
  assert mw.format_duration(0) == "00:00:00"
  assert mw.format_duration(3725.4) == "01:02:05"
  assert mw.format_duration(86400 + 61) == "1d 00:01:01"
  assert mw.format_duration(float("inf")) == "n/a"


def test_format_progress():
  line = mw.format_progress(step=120, total_steps=1000, steps_per_sec=2.0,
                            examples_per_step=768, loss=0.43219,
                            accuracy=0.87654)
  assert line == ("step 120/1000 (12.0%) | loss 0.4322 | acc 0.8765 | "
                  "2.00 steps/s | 1536 ex/s | ETA 00:07:20")
  first = mw.format_progress(step=0, total_steps=10, steps_per_sec=None,
                             examples_per_step=4)
  assert first == "step 0/10 (0.0%) | n/a steps/s | n/a ex/s | ETA n/a"


def test_progress_reporter_measures_rate():
  times = iter([100.0, 110.0])
  reporter = mw.ProgressReporter(total_steps=100, examples_per_step=8,
                                 loss_key="train/loss",
                                 clock=lambda: next(times))
  first = reporter.report(0)
  assert "n/a steps/s" in first
  line = reporter.report(20, {"train/loss": jnp.float32(0.5)})
  assert line == ("step 20/100 (20.0%) | loss 0.5000 | 2.00 steps/s | "
                  "16 ex/s | ETA 00:00:40")


def _tensorboard_events(logdir):
  """Every Event proto in a directory's event files (TFRecord framing:
  length u64, crc u32, payload, crc u32)."""
  import struct  # pylint: disable=import-outside-toplevel
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  events = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[offset + 12:offset + 12 + length])
      events.append(event)
      offset += 12 + length + 4
  return events


def test_tensorboard_hparams_go_into_the_runs_own_event_file(tmp_path):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from tensorboardX.proto import plugin_hparams_pb2  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({"seed": 3, "opt": {"lr": 1e-4, "betas": (0.9, 0.95)},
                                      "mesh": "data:-1", "ckpt": {"async_save": True}})
  flat = mw.flatten_config(config)
  assert flat == {"seed": 3, "opt.lr": 1e-4, "opt.betas": "(0.9, 0.95)",
                  "mesh": "data:-1", "ckpt.async_save": True}
  writer = mw.writers_for_process(tmp_path, process_index=0)
  writer.write_hparams(flat)
  writer.write_scalars(1, {"perf/steps_per_s": 2.5})
  writer.close()
  assert [p.name for p in (tmp_path / "tensorboard").iterdir()
          if p.is_dir()] == []  # no second run directory
  values = [v for e in _tensorboard_events(tmp_path / "tensorboard")
            for v in e.summary.value]
  start = [v for v in values if v.tag == "_hparams_/session_start_info"]
  assert len(start) == 1 and start[0].metadata.plugin_data.plugin_name == "hparams"
  data = plugin_hparams_pb2.HParamsPluginData()
  data.ParseFromString(start[0].metadata.plugin_data.content)
  hparams = data.session_start_info.hparams
  assert hparams["opt.lr"].number_value == pytest.approx(1e-4)
  assert hparams["mesh"].string_value == "data:-1"
  assert hparams["ckpt.async_save"].bool_value
  assert any(v.tag == "perf/steps_per_s" and v.simple_value == 2.5 for v in values)
  # JSONL has no hparams (config.json is the run's config); scalars still go there.
  assert mw.read_jsonl_metrics(tmp_path) == [{"step": 1, "perf/steps_per_s": 2.5}]


def test_progress_reporter_exposes_its_rate_and_can_stay_quiet(caplog):
  times = iter([0.0, 4.0])
  reporter = mw.ProgressReporter(total_steps=10, examples_per_step=8,
                                 clock=lambda: next(times))
  with caplog.at_level("INFO"):
    reporter.report(0, log=False)
    assert reporter.steps_per_sec is None
    reporter.report(2, log=False)
  assert reporter.steps_per_sec == pytest.approx(0.5)
  assert "steps/s" not in caplog.text
