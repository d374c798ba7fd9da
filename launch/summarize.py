"""One results table for a sweep, from its workdirs alone.

Each run's workdir holds `sweep_run.json` (its overrides, written when the
sweep was expanded) and `metrics.jsonl` (written by process 0 of the run).
The final evaluation of a run is the last record with `eval/` keys: a resumed
run appends to metrics.jsonl, so the last occurrence wins.

  python launch/sweep.py summarize --workdir_root=DIR [--metric=eval/exact_accuracy]
      [--format=md|csv]
"""
import csv
import io
import json
import math
from typing import Any

from etils import epath

from hrm_jax import metric_writers
from launch import sweeps


def final_eval(records: list[dict[str, Any]]) -> dict[str, Any]:
  """The last record holding eval/ metrics ({} if the run never evaluated)."""
  for record in reversed(records):
    if any(key.startswith("eval/") for key in record):
      return record
  return {}


def collect_rows(workdir_root: str) -> list[dict[str, Any]]:
  """One row per workdir with a sweep_run.json: manifest + final eval."""
  rows = []
  root = epath.Path(workdir_root)
  for manifest_path in sorted(root.glob(f"*/{sweeps.MANIFEST}")):
    manifest = json.loads(manifest_path.read_text())
    records = metric_writers.read_jsonl_metrics(manifest_path.parent)
    last_step = max((r.get("step", 0) for r in records), default=None)
    evaluation = final_eval(records)
    rows.append({"index": manifest["index"], "name": manifest["name"],
                 "overrides": manifest["overrides"], "last_step": last_step,
                 "eval_step": evaluation.get("step"),
                 "metrics": {k: v for k, v in evaluation.items() if k != "step"}})
  return rows


def sort_rows(rows, metric: str, lower_is_better: bool):
  """Best first by `metric`; runs without it (failed, running) last, by index."""
  def key(row):
    value = row["metrics"].get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
      return (1, 0.0, row["index"])
    return (0, value if lower_is_better else -value, row["index"])
  return sorted(rows, key=key)


def table(rows, metric: str) -> tuple[list[str], list[list[str]]]:
  """(header, cells): run, every override key, steps, the metric, other evals."""
  override_keys = []
  for row in rows:
    override_keys += [k for k in row["overrides"] if k not in override_keys]
  other = sorted({k for row in rows for k in row["metrics"]} - {metric})
  header = ["run"] + override_keys + ["last_step", "eval_step", metric] + other
  cells = []
  for row in rows:
    line = [row["name"]]
    line += [sweeps.format_value(row["overrides"][k]) if k in row["overrides"] else ""
             for k in override_keys]
    line += [_cell(row["last_step"]), _cell(row["eval_step"])]
    line += [_cell(row["metrics"].get(k)) for k in [metric] + other]
    cells.append(line)
  return header, cells


def _cell(value) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}" if not value.is_integer() else str(int(value))
  return str(value)


def render(header, cells, fmt: str) -> str:
  if fmt == "csv":
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(cells)
    return out.getvalue()
  if fmt != "md":
    raise ValueError(f"format must be md or csv, got {fmt!r}")
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(line) + " |" for line in cells]
  return "\n".join(lines) + "\n"


def summarize(workdir_root: str, metric: str = "eval/exact_accuracy", fmt: str = "md",
              lower_is_better: bool | None = None) -> str:
  """The rendered table (losses sort ascending unless told otherwise)."""
  rows = collect_rows(workdir_root)
  if not rows:
    raise FileNotFoundError(f"No */{sweeps.MANIFEST} under {workdir_root}: is it a "
                            "sweep's --workdir_root?")
  if lower_is_better is None:
    lower_is_better = metric.endswith("loss")
  header, cells = table(sort_rows(rows, metric, lower_is_better), metric)
  return render(header, cells, fmt)
