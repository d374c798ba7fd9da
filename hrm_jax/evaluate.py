"""python -m hrm_jax.evaluate --workdir=DIR: a trained run's evaluation, alone.

Evaluates a run's (or a converted PyTorch model's) checkpoint on its own test
split, or on any data its puzzle family reads (`--config.data.source=...`,
`--split=train`), under the field's test-time rules, and prints one table with
a row per setting:

  python -m hrm_jax.evaluate --workdir=W --num_samples=1,16 \\
      --select=q_halt,first_halt,confidence,checker --noise=0.3 --noise_on=z_L

Every combination of --segments x --halting x --num_samples x --noise x
--noise_on is one evaluation (`evaluation.build`, the trainer's own eval step
and evaluator); each rule of --select is a row of it (rules that need a
separate run, e.g. ARC's votes, get one). Columns: exact accuracy of the rule
(ARC: pass@2 under `config.eval.arc_scoring`), the oracle (any of the K
right), NFE per puzzle (network calls: segments run x calls per segment x K)
and puzzles/s (the first batch, which compiles, left out). The table and
every evaluation's full metrics go to DIR/eval/NAME.json (NAME: --name, or
step<N>_<split>); ARC also writes NAME_submission.json (Kaggle format).
`--aggregate=all_checkpoints` (ARC) pools the votes of every kept checkpoint
of the run, as TRM's evaluator does over its evaluations.

Errors (no checkpoint, data the weights cannot read, an unknown rule or field)
end in one line and exit status 2 (usage) or 1.
"""
from __future__ import annotations

import ast
import itertools
import os
import sys
import time

from absl import app, flags, logging
import jax

from hrm_jax import checkpoint, data, errors, evaluation, inference, sampling, sharding
from hrm_jax import workdir as workdir_lib
from hrm_jax.models import act

TOOL = "hrm_jax.evaluate"
EVAL_DIR = "eval"
HALTING = ("fixed", "adaptive")
AGGREGATE = ("none", "all_checkpoints")
# Noise for K > 1 when --noise is not given and the run's eval.latent_noise is 0:
# K noiseless samples would be K copies of one trajectory (BUILD_NOTES: sigma 0.3
# is the best q_halt setting on the Sudoku CPU model).
DEFAULT_NOISE = 0.3


class EvaluateError(ValueError):
  """A bad request: the message says what and how to fix it."""


def apply_overrides(config, overrides: list[str]) -> None:
  """`--config.a.b=value` onto the run's config (values parsed as Python
  literals, else strings); an unknown field or a wrong type fails by name."""
  for item in overrides:
    key, sep, text = item[len("--config."):].partition("=")
    if not sep:
      raise EvaluateError(f"{item}: expected --config.FIELD=VALUE.")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise EvaluateError(f"--config.{key}: the run's config has no field {part!r}.")
      node = node[part]
    if leaf not in node:
      raise EvaluateError(f"--config.{key}: the run's config has no field {leaf!r} "
                          f"(fields there: {sorted(node.keys())}).")
    if isinstance(node[leaf], str):
      value = text  # a string field takes the text as it is
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise EvaluateError(f"--config.{key}={text}: {' '.join(str(e).split())}") from None


def settings(f, run_noise: float = 0.0) -> list[dict]:
  """The evaluations asked for: every combination of the setting flags (no
  --noise: none for K = 1, the run's eval.latent_noise or DEFAULT_NOISE for K > 1)."""
  halting = [h for h in f.halting]
  for h in halting:
    if h not in HALTING:
      raise EvaluateError(f"--halting={h}: use {' or '.join(HALTING)}.")
  for where in f.noise_on:
    if where not in act.NOISE_PLACES:
      raise EvaluateError(f"--noise_on={where}: use one of {list(act.NOISE_PLACES)}.")
  for rule in f.select:
    if rule not in sampling.SELECT_RULES:
      raise EvaluateError(f"--select={rule}: use one of {list(sampling.SELECT_RULES)}.")
  out = []
  for m, h, k, sigma, where in itertools.product(f.segments or [0], halting, f.num_samples,
                                                 f.noise or [None], f.noise_on):
    if sigma is None:
      sigma = 0.0 if k == 1 else (run_noise or DEFAULT_NOISE)
    try:
      sampling.check_options(int(k), float(sigma), f.select[0], prefix="--")
    except ValueError as e:
      raise EvaluateError(str(e)) from None
    setting = {"segments": int(m), "halting": h, "num_samples": int(k),
               "noise": float(sigma), "noise_on": where}
    if setting not in out:
      out.append(setting)
  return out


def eval_config(config, setting: dict, select: str, batch_size: int, max_batches: int):
  """The run's config with one setting's `config.eval` fields."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    e = cfg.eval
    e.halt_max_steps = setting["segments"] or e.halt_max_steps
    e.adaptive_halting = setting["halting"] == "adaptive"
    e.num_samples, e.latent_noise = setting["num_samples"], setting["noise"]
    e.noise_on, e.select = setting["noise_on"], select
    e.batch_size = batch_size or e.batch_size
    e.max_batches = max_batches
    e.aggregate_votes = False  # pooling is --aggregate's, over checkpoints
  return cfg


def _run(loaded, cfg, split, mesh):
  """One evaluation: (result, puzzles/s, evaluator)."""
  try:
    eval_fn, evaluator = evaluation.build(cfg, loaded.model, split, None)
  except ValueError as e:
    raise EvaluateError(str(e)) from None
  timing: dict = {}
  result = evaluation.evaluate(loaded.weights, split, eval_fn, evaluator, cfg, mesh,
                               label="  evaluation", timing=timing, report=_say)
  rows = result.get("count", 0.0)
  later = timing["seconds"] - timing.get("first_batch_seconds", 0.0)
  if timing["batches"] > 1 and later > 0:  # leave out the compiling first batch
    rate = min(rows, (timing["batches"] - 1) * timing["rows_per_batch"]) / later
  else:
    rate = rows / max(timing["seconds"], 1e-9)
  return result, rate, evaluator


def _say(line: str) -> None:
  """Progress, on stderr (the table is stdout)."""
  print(line, file=sys.stderr, flush=True)


def _describe(setting: dict) -> str:
  return " ".join(f"{k}={v}" for k, v in setting.items())


def headline(result: dict, rule: str, num_samples: int) -> float:
  """The accuracy of `rule` in an evaluation's result (ARC: pass@2)."""
  if "arc/pass@2" in result:
    return result["arc/pass@2"]
  if num_samples > 1 and f"exact_{rule}" in result:
    return result[f"exact_{rule}"]
  return result["exact_accuracy"]  # one sample: every rule picks it


def evaluate_run(loaded, split, config, f, mesh) -> dict:
  """Every setting's evaluation: {"rows": table rows, "evaluations": results}."""
  rows, evaluations = [], []
  # One run reports every rule when the evaluator does (Sudoku/Maze); ARC's votes
  # follow the selected sample, so each rule is its own run there.
  every_rule = getattr(evaluation.load_evaluator(config.eval, split, None),
                       "reports_every_rule", False)
  for setting in settings(f, config.eval.get("latent_noise", 0.0)):
    per_rule = setting["num_samples"] > 1 and not every_rule
    groups = [[r] for r in f.select] if per_rule else [list(f.select)]
    for rules in groups:
      primary = "checker" if "checker" in rules and setting["num_samples"] == 1 else rules[0]
      cfg = eval_config(config, setting, primary, f.batch_size, f.max_batches)
      t0 = time.perf_counter()
      result, rate, evaluator = _run(loaded, cfg, split, mesh)
      _say(f"{_describe(setting)}, select={primary}: exact "
           f"{result.get('exact_accuracy', float('nan')):.4f} over {result.get('count', 0):.0f}"
           f" puzzles in {time.perf_counter() - t0:.1f} s")
      evaluations.append({"setting": setting, "select": primary, "metrics": result})
      ran = dict(setting, segments=evaluation.segments(cfg.eval, loaded.model.config))
      for rule in rules:
        rows.append(dict(ran, select=rule,
                         accuracy=headline(result, rule, setting["num_samples"]),
                         oracle=result.get("exact_oracle", result.get("exact_accuracy")),
                         nfe=result.get("nfe"), puzzles_per_s=rate))
      if hasattr(evaluator, "voter") and jax.process_index() == 0:
        suffix = f"_{len(evaluations)}" if len(evaluations) > 1 else ""
        evaluator.voter.write_submission(_out_path(f, loaded, suffix + "_submission.json"))
  return {"rows": rows, "evaluations": evaluations}


def aggregate_checkpoints(workdir, split, config, f, mesh) -> dict:
  """ARC: the votes of every kept checkpoint pooled (one setting, one rule)."""
  ckpt = checkpoint.Checkpointer(workdir, every_steps=1, async_save=False)
  steps = ckpt.all_steps()
  ckpt.close()
  wanted = settings(f, config.eval.get("latent_noise", 0.0))
  if len(wanted) != 1 or len(f.select) != 1:
    raise EvaluateError("--aggregate=all_checkpoints takes one setting and one --select.")
  if not hasattr(evaluation.load_evaluator(config.eval, split, None), "voter"):
    raise EvaluateError(f"--aggregate=all_checkpoints pools votes, and the "
                        f"{config.data.family} evaluator does not vote (ARC does).")
  pool, per_step = None, {}
  cfg = eval_config(config, wanted[0], f.select[0], f.batch_size, f.max_batches)
  for step in steps:
    _say(f"checkpoint {step} ({len(per_step) + 1}/{len(steps)})")
    loaded = _load(workdir, mesh, step)
    result, _, evaluator = _run(loaded, cfg.copy_and_resolve_references(), split, mesh)
    per_step[step] = result
    pool = evaluator.voter if pool is None else pool.merge(evaluator.voter)
  pooled = {f"arc/{k}": v for k, v in pool.finalize(config.eval.arc_scoring).items()}
  if jax.process_index() == 0:
    pool.write_submission(_out_path(f, None, "_submission.json"))
  ran = dict(wanted[0], segments=evaluation.segments(cfg.eval, loaded.model.config))
  rows = [dict(ran, select=f.select[0], accuracy=pooled["arc/pass@2"],
               oracle=None, nfe=per_step[steps[-1]].get("nfe"), puzzles_per_s=None,
               checkpoints=len(steps))]
  return {"rows": rows, "evaluations": [{"step": s, "metrics": r} for s, r in
                                        per_step.items()], "pooled": pooled}


def _load(workdir, mesh, step=None):
  try:
    return workdir_lib.load_weights(workdir, sharding.replicated(mesh), step=step)
  except workdir_lib.WorkdirError as e:
    raise EvaluateError(str(e)) from None


def _out_path(f, loaded, suffix: str = ".json") -> str:
  name = f.name or (f"step{loaded.step}_{f.split}" if loaded else f"all_checkpoints_{f.split}")
  return os.path.join(f.workdir, EVAL_DIR, name + suffix)


def load_split(config, split_name: str, loaded) -> data.PuzzleSplit:
  """The data to evaluate on, checked against what the weights can read."""
  try:
    split = data.load(config.data, split_name)
  except (data.DataError, OSError) as e:
    raise EvaluateError(f"The {split_name} split cannot be loaded "
                        f"({' '.join(str(e).split())}): check --config.data.source / "
                        "data_dir, or build the run's dataset.") from None
  try:
    inference.check_compatible(loaded, str(config.data.family), split.inputs.shape[1])
  except inference.InferenceError as e:
    raise EvaluateError(str(e)) from None
  rows = int(loaded.weights.puzzle_emb.shape[0])
  if split.metadata.num_puzzle_identifiers > rows:
    raise EvaluateError(
        f"The data has {split.metadata.num_puzzle_identifiers} puzzle identifiers and the "
        f"weights' puzzle embedding {rows} rows: these are not the puzzles the run "
        "learned (ARC needs the run's own task set and augmentations).")
  return split


def table(rows: list[dict]) -> str:
  head = (f"{'segments':>8s} {'halting':>8s} {'K':>3s} {'noise':>6s} {'on':>5s} "
          f"{'select':>10s} {'exact':>7s} {'oracle':>7s} {'NFE':>8s} {'puzzles/s':>9s}")
  fmt = lambda v, spec: (format(v, spec) if v is not None
                        else format("-", ">" + spec.split(".")[0]))
  lines = [head]
  for r in rows:
    lines.append(f"{r['segments']:>8d} {r['halting']:>8s} {r['num_samples']:>3d} "
                 f"{r['noise']:>6.2f} {r['noise_on']:>5s} {r['select']:>10s} "
                 f"{fmt(r['accuracy'], '7.4f')} {fmt(r['oracle'], '7.4f')} "
                 f"{fmt(r['nfe'], '8.1f')} {fmt(r['puzzles_per_s'], '9.1f')}")
  return "\n".join(lines)


def run(f, overrides: list[str]) -> tuple[dict, str]:
  """The command: (everything written to the JSON, its path)."""
  if not f.workdir:
    raise errors.UsageError("--workdir is required (a training run's directory, or a "
                            "converted model's).")
  if f.aggregate not in AGGREGATE:
    raise EvaluateError(f"--aggregate={f.aggregate}: use one of {list(AGGREGATE)}.")
  try:
    mesh = sharding.make_mesh(workdir_lib.read_config(f.workdir).mesh)
  except (workdir_lib.WorkdirError, OSError) as e:
    raise EvaluateError(errors.first_line(e)) from None
  if f.batch_size % mesh.devices.size:
    raise EvaluateError(f"--batch_size={f.batch_size} must divide by the "
                        f"{mesh.devices.size} devices.")
  loaded = _load(f.workdir, mesh, f.step if f.step >= 0 else None)
  config = loaded.config.copy_and_resolve_references()
  apply_overrides(config, overrides)
  split = load_split(config, f.split, loaded)
  if f.aggregate == "all_checkpoints":
    out = aggregate_checkpoints(f.workdir, split, config, f, mesh)
  else:
    out = evaluate_run(loaded, split, config, f, mesh)
  out.update(workdir=os.fspath(f.workdir), step=loaded.step, split=f.split,
             overrides=overrides, aggregate=f.aggregate)
  path = _out_path(f, loaded if f.aggregate == "none" else None)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    workdir_lib.write_json_atomically(path, out)
  return out, path


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run (or convert output) directory.")
  flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the newest).")
  flags.DEFINE_string("split", "test", "Which split of the (possibly overridden) data.")
  flags.DEFINE_string("name", None, "Output name: DIR/eval/NAME.json (default step<N>_<split>).")
  flags.DEFINE_list("segments", [], "Segments at most (default: the run's evaluation value).")
  flags.DEFINE_list("halting", ["fixed"], "fixed (every segment) and/or adaptive (Q head).")
  flags.DEFINE_list("num_samples", ["1"], "Trajectories per puzzle, K.")
  flags.DEFINE_list("noise", [], "Std of the latent noise (default: 0 for K = 1; for "
                    f"K > 1 the run's eval.latent_noise, or {DEFAULT_NOISE} if that is 0).")
  flags.DEFINE_list("noise_on", ["both"], f"Where the noise goes: {list(act.NOISE_PLACES)}.")
  flags.DEFINE_list("select", ["q_halt"], f"Selection rules: {list(sampling.SELECT_RULES)}.")
  flags.DEFINE_integer("batch_size", 0, "Puzzles per batch (0: the run's eval.batch_size).")
  flags.DEFINE_integer("max_batches", -1, "Evaluate only the first N batches (-1: all).")
  flags.DEFINE_string("aggregate", "none", "all_checkpoints: pool ARC votes over checkpoints.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parse, minus the `--config.FIELD=VALUE` overrides (kept for `run`)."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  rest = [argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")]
  try:
    remaining = flags.FLAGS(rest)
  except flags.Error as e:
    print(f"{TOOL}: error: {e}", file=sys.stderr)
    sys.exit(errors.USAGE)
  parse_flags.overrides = overrides
  return remaining


def main(argv):
  errors.tool_logging(TOOL, argv, level=logging.WARNING)
  f = flags.FLAGS
  try:
    f.segments, f.num_samples = [int(x) for x in f.segments], [int(x) for x in f.num_samples]
    f.noise = [float(x) for x in f.noise]
  except ValueError as e:
    errors.fail(TOOL, errors.UsageError(f"--segments/--num_samples/--noise: {e}"),
                hint=False, default_code=errors.USAGE)
  try:
    out, path = run(f, getattr(parse_flags, "overrides", []))
  except (EvaluateError, errors.UsageError) as e:
    errors.fail(TOOL, e, hint=False, default_code=errors.USAGE)
  print(table(out["rows"]))
  if "pooled" in out:
    print("pooled over %d checkpoints: %s" % (len(out["evaluations"]), ", ".join(
        f"{k}={v:.4f}" for k, v in sorted(out["pooled"].items())
        if k.endswith(("pass@1", "pass@2")))))
  print(f"Wrote {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags)
