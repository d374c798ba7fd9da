"""Solve one puzzle from the command line with a trained (or converted) model.

    python -m hrm_jax.solve --workdir=DIR --sudoku=53..7....6..195....
    python -m hrm_jax.solve --workdir=DIR --maze=maze.txt --adaptive
    python -m hrm_jax.solve --workdir=CONVERTED_DIR --arc=00576224.json --json

--workdir is a training run (its newest checkpoint) or a `hrm_jax.convert`
output of an official PyTorch checkpoint (the same layout). The puzzle:

  --sudoku  81 characters row by row ('.' or '0' blank); 16 or 36 for models
            trained on 4x4 or 6x6 boards. Whitespace is ignored.
  --maze    a text file of square rows over "# SGo" minus 'o' (wall, open,
            start, goal), exactly one S and one G.
  --arc     an ARC task JSON; every test input is solved. A test pair may
            omit "output" (then correctness is not reported).

Segments: by default all --halt_max_steps (the model's value unless given;
more is the paper's inference-time scaling); with --adaptive each puzzle
stops when its Q head says halt. The Q-halt confidence printed is
sigmoid(q_halt) of the last segment run.

Test-time compute (`hrm_jax.sampling`): --num_samples=K runs K trajectories
at once, with --latent_noise=SIGMA Gaussian noise on the latent state before
each segment (seeded by --sample_seed), and --select picks the answer:
"q_halt" (the most confident), "vote" (the most frequent), "first_halt" (the
first whose Q head says halt), "confidence" (the highest mean top-1 probability)
or "checker" (the most confident one that passes the puzzle's rule check;
"unsure" when none does; not for ARC, which has no rule check). Sudoku and maze results say
whether the checker accepts the chosen answer and how many samples it accepted.

ARC: an HRM knows a task only through its learned puzzle embedding, trained
on the task's demonstration pairs; the demonstrations in the JSON are not
read at inference. When the task id (the file name) is among the model's
puzzle identifiers, every augmented variant the model was trained with is
run, mapped back and voted on, as in the paper's evaluation; otherwise the
blank embedding (id 0) is used and the output says so.

Bad input (`hrm_jax.solve_input` parses it before any model loads) exits with
status 1 and a one-line message naming the problem;
--json prints the result as one JSON object on stdout.
"""
# pylint: disable=invalid-name
from __future__ import annotations

import json
from typing import Any

from absl import app
from absl import flags
import numpy as np

from hrm_jax import errors as tool_errors
from hrm_jax import inference
from hrm_jax import sampling
from hrm_jax import solve_input
from hrm_jax.data import arc as arc_data
from hrm_jax.data import arc_tasks
from hrm_jax.data import maze as maze_data
from hrm_jax.data import sudoku as sudoku_data
from hrm_jax.data import sudoku_solver
from hrm_jax.evaluators import arc as arc_eval

SolveError = inference.InferenceError

# ------------------------------------------------------------------ solving


def _halting(adaptive: bool, used: int, M: int) -> str:
  if adaptive:
    return f"adaptive: the Q head halted after {used} of at most {M} segments"
  return f"fixed: all {M} segments (no --adaptive)"


def _common(loaded: inference.Loaded, M: int, adaptive: bool,
            sampling_opts: dict[str, Any]) -> dict[str, Any]:
  return {"model": loaded.directory, "checkpoint_step": loaded.step,
          "halt_max_steps": M, "adaptive_halting": adaptive,
          "num_samples": sampling_opts.get("num_samples", 1),
          "latent_noise": sampling_opts.get("latent_noise", 0.0),
          "select": sampling_opts.get("select", "q_halt")}


def _sample_fields(out: dict[str, Any], accepts: bool) -> dict[str, Any]:
  """What the K samples of row 0 say: the checker's verdict on the chosen
  answer, how many samples it accepted, distinct answers, 'unsure'."""
  samples = out.get("sample_predictions")
  accepted = out.get("sample_accepted")
  return {
      "checker_accepts": bool(accepts),
      "samples_accepted": None if accepted is None else int(np.sum(accepted[0])),
      "distinct_answers": (None if samples is None else
                           len({bytes(np.ascontiguousarray(p)) for p in samples[0]})),
      # select="checker" and no sample passed: the answer is the Q head's guess.
      "unsure": bool(out["unsure"][0]) if "unsure" in out else False,
  }


def solve_sudoku(loaded: inference.Loaded, board: np.ndarray, M: int,
                 adaptive: bool, **sampling_opts) -> dict[str, Any]:
  """Runs the model on one board and checks the answer against the rules.

  `sampling_opts`: num_samples, latent_noise, select, seed of `inference.predict`.
  """
  n = board.shape[0]
  inference.check_compatible(loaded, "sudoku", n * n)
  inputs = sudoku_data.encode(board)
  out = inference.predict(loaded, inputs[None], np.zeros(1),
                          halt_max_steps=M, adaptive=adaptive, **sampling_opts)
  tokens = out["predictions"][0]
  problem = sudoku_data.check_answer(inputs, tokens)
  # Token d+1 is digit d; anything below 2 (PAD, blank) is shown as blank.
  solution = np.where(tokens >= 2, tokens.astype(np.int16) - 1, 0).astype(np.int8)
  used = int(out["steps"][0])
  return dict(
      _common(loaded, M, adaptive, sampling_opts), puzzle="sudoku", size=f"{n}x{n}",
      input=board.tolist(), solution=solution.reshape(n, n).tolist(),
      valid=problem is None, problem=problem,
      unique_solution=sudoku_solver.count_solutions(board) == 1,
      segments=used, halting=_halting(adaptive, used, M),
      q_halt_confidence=float(out["q_halt_confidence"][0]),
      **_sample_fields(out, problem is None), notes=[])


def solve_maze(loaded: inference.Loaded, grid: np.ndarray, M: int,
               adaptive: bool, **sampling_opts) -> dict[str, Any]:
  """Runs the model on one maze and checks that its path is a shortest one from S to G."""
  inference.check_compatible(loaded, "maze", grid.size)
  out = inference.predict(loaded, grid.reshape(1, -1), np.zeros(1),
                          halt_max_steps=M, adaptive=adaptive, **sampling_opts)
  answer = out["predictions"][0].reshape(grid.shape)
  problem = maze_data.check_answer(grid.reshape(-1), answer.reshape(-1))
  rows = [maze_data.decode(np.clip(r, 1, len(maze_data.CHARSET))) for r in answer]
  used = int(out["steps"][0])
  return dict(
      _common(loaded, M, adaptive, sampling_opts), puzzle="maze",
      size=f"{grid.shape[0]}x{grid.shape[1]}",
      input=[maze_data.decode(r) for r in grid], solution=rows, valid=problem is None,
      problem=problem,
      path_cells=int(np.sum(answer == maze_data.PATH)),
      segments=used, halting=_halting(adaptive, used, M),
      q_halt_confidence=float(out["q_halt_confidence"][0]),
      **_sample_fields(out, problem is None), notes=[])


def _arc_variants(loaded: inference.Loaded, task_id: str,
                  max_variants: int) -> tuple[list[tuple[int, int, np.ndarray]], list[str]]:
  """(puzzle id, dihedral t, colour map) per variant to run, and notes."""
  names = loaded.identifiers
  if names is None:
    return [(0, 0, np.arange(10))], [
        "The model's puzzle identifiers are unknown (a converted checkpoint made "
        "without --identifiers), so the blank puzzle embedding (id 0) was used: the "
        "model gets no information about this task and the answer is very likely "
        "wrong. Convert again with --identifiers=<the training dataset's "
        "identifiers.json>."]
  variants = []
  for pid, name in enumerate(names):
    task, t, cmap = arc_data.parse_name(name)
    if task == task_id and pid != 0:
      variants.append((pid, t, cmap))
  if not variants:
    return [(0, 0, np.arange(10))], [
        f"Task {task_id!r} (the file name) is not among the model's "
        f"{len(names)} puzzle identifiers, so the blank puzzle embedding (id 0) was "
        "used. HRM learns one embedding per task from its demonstration pairs "
        "during training and does not read them at inference, so for an unseen "
        "task the answer is very likely wrong."]
  notes = [f"Task {task_id!r} is known to the model: voted over "
           f"{min(len(variants), max_variants or len(variants))} of its "
           f"{len(variants)} puzzle variants (the original and its augmentations)."]
  if max_variants > 0:
    variants = variants[:max_variants]  # the original comes first (lowest id)
  return variants, notes


def solve_arc(loaded: inference.Loaded, task: arc_tasks.Task, has_output: list[bool],
              M: int, adaptive: bool, max_variants: int = 0,
              batch_size: int = 64, **sampling_opts) -> dict[str, Any]:
  """Every test input through every known variant; votes give two attempts.

  With several samples per variant, the one `select` chooses casts its vote.
  """
  inference.check_compatible(loaded, "arc", arc_data.SEQ_LEN)
  variants, notes = _arc_variants(loaded, task.task_id, max_variants)
  jobs = [(k, v) for k in range(len(task.test)) for v in variants]
  rows = [arc_data.encode_grid(arc_data.augment_grid(task.test[k][0], t, cmap))
          for k, (_, t, cmap) in jobs]
  out = inference.predict(loaded, np.stack(rows), np.asarray([pid for _, (pid, _, _) in jobs]),
                          halt_max_steps=M, adaptive=adaptive, batch_size=batch_size,
                          **sampling_opts)
  votes = arc_eval.Votes()
  for (k, (_, t, cmap)), pred, q in zip(jobs, out["predictions"], out["q_halt_confidence"]):
    grid = arc_data.crop(pred)
    # An answer that crops to an empty grid is never right: `solve` lets it cast no
    # vote (the evaluator counts it by default, as the reference notebook).
    if grid.size:
      votes.add(k, arc_data.invert_grid(grid, t, cmap), q)
  tests = []
  for k, (_, truth) in enumerate(task.test):
    ranked = votes.ranked(k)[:2]
    mine = [i for i, (kk, _) in enumerate(jobs) if kk == k]
    entry = {
        "index": k, "attempts": [grid.tolist() for grid, _, _ in ranked],
        "votes": [count for _, count, _ in ranked], "variants_run": len(mine),
        "segments_mean": float(np.mean(out["steps"][mine])),
        # Ranking tie-break of the paper: mean confidence of the winner's voters.
        "q_halt_confidence": ranked[0][2] if ranked else None,
        "correct_top1": None, "correct_top2": None,
    }
    if has_output[k]:
      keys = [arc_eval.grid_key(grid) for grid, _, _ in ranked]
      entry["correct_top1"] = bool(keys[:1] == [arc_eval.grid_key(truth)])
      entry["correct_top2"] = arc_eval.grid_key(truth) in keys
    if not ranked:
      entry["problem"] = "every variant's prediction crops to an empty grid"
    tests.append(entry)
  used = [t["segments_mean"] for t in tests]
  return dict(_common(loaded, M, adaptive, sampling_opts), puzzle="arc", task=task.task_id,
              puzzle_identifiers=[pid for pid, _, _ in variants], tests=tests,
              halting=(f"adaptive: the Q head halted after {np.mean(used):.2f} segments "
                       f"on average (at most {M})" if adaptive else
                       _halting(False, M, M)),
              notes=notes)


# ----------------------------------------------------------------- printing


def format_sudoku(board: list[list[int]]) -> str:
  """Digits with box separators; blanks as '.'."""
  n = len(board)
  geo = sudoku_solver.geometry_for(n)
  lines = []
  for r, row in enumerate(board):
    if r and r % geo.box_rows == 0:
      lines.append("+".join(["-" * (2 * geo.box_cols + 1)] * (n // geo.box_cols)))
    cells = [str(d) if d else "." for d in row]
    groups = [" " + " ".join(cells[c:c + geo.box_cols]) + " "
              for c in range(0, n, geo.box_cols)]
    lines.append("|".join(groups))
  return "\n".join(lines)


def format_arc(grid: list[list[int]]) -> str:
  return "\n".join("".join(str(c) for c in row) for row in grid)


def format_text(result: dict[str, Any]) -> str:
  """The human-readable report of a `solve_*` result."""
  lines = [f"Model: {result['model']}" + (f" (step {result['checkpoint_step']})"
                                          if result["checkpoint_step"] is not None else "")]
  kind = result["puzzle"]
  if kind == "sudoku":
    lines += [f"Sudoku {result['size']}:", format_sudoku(result["input"]), "",
              "Solution:", format_sudoku(result["solution"]), ""]
    lines.append("Valid: yes (rules hold, givens kept)" if result["valid"]
                 else f"Valid: NO ({result['problem']})")
    if not result["unique_solution"]:
      lines.append("Note: this puzzle has more than one solution.")
  elif kind == "maze":
    lines += [f"Maze {result['size']}:", *result["input"], "", "Solution:",
              *result["solution"], ""]
    if result["valid"]:
      lines.append("Valid: yes (a shortest path joins S to G through open cells)")
    else:
      lines.append(f"Valid: NO ({result['problem']})")
  else:
    lines.append(f"ARC task {result['task']}:")
    for t in result["tests"]:
      lines.append(f"Test input {t['index']}: {t['variants_run']} variant(s) run")
      for i, (grid, votes) in enumerate(zip(t["attempts"], t["votes"])):
        lines += [f"  attempt {i + 1} ({votes} vote(s)):", format_arc(grid), ""]
      if not t["attempts"]:
        lines.append(f"  no answer: {t['problem']}")
      if t["correct_top2"] is not None:
        lines.append(f"  correct: attempt 1 {'yes' if t['correct_top1'] else 'no'}, "
                     f"top 2 {'yes' if t['correct_top2'] else 'no'}")
      if t["q_halt_confidence"] is not None:
        lines.append(f"  Q-halt confidence (winner's voters): {t['q_halt_confidence']:.3f}")
  lines.append(f"Segments: {result['halting']}")
  if kind != "arc":
    lines.append(f"Q-halt confidence sigmoid(q_halt): {result['q_halt_confidence']:.3f}")
  lines += _format_samples(result)
  lines += [f"Note: {n}" for n in result["notes"]]
  return "\n".join(lines)


def _format_samples(result: dict[str, Any]) -> list[str]:
  """The sampling line (K > 1) and the checker's verdict on the chosen answer."""
  lines = []
  K = result.get("num_samples", 1)
  if K > 1:
    line = (f"Samples: {K} trajectories (latent noise {result['latent_noise']:g}), "
            f"answer chosen by {result['select']}")
    if result.get("distinct_answers") is not None:
      line += f"; {result['distinct_answers']} distinct answer(s)"
    lines.append(line)
  if result["puzzle"] == "arc":
    lines.append("Checker: none for ARC (an answer is right only if it equals the truth)")
    return lines
  verdict = "accepts" if result["checker_accepts"] else "rejects"
  line = f"Checker: {verdict} the chosen answer"
  if K > 1 and result.get("samples_accepted") is not None:
    line += f" ({result['samples_accepted']} of {K} samples accepted)"
  if result.get("unsure"):
    line += "; unsure: no sample passed the check, this is the Q head's best guess"
  lines.append(line)
  return lines


# ---------------------------------------------------------------------- CLI


def run(*, workdir: str | None = None, sudoku: str | None = None,
        maze: str | None = None, arc: str | None = None,
        halt_max_steps: int | None = None, adaptive: bool = False,
        arc_variants: int = 0, batch_size: int = 64, num_samples: int = 1,
        latent_noise: float = 0.0, select: str = "q_halt",
        sample_seed: int = 0) -> dict[str, Any]:
  """The whole tool minus flags and printing (tests call this).

  The puzzle is parsed before the model is loaded, so malformed input fails
  in a second rather than after a checkpoint restore.

  Raises:
    SolveError (= inference.InferenceError): anything the user must fix.
  """
  if not workdir:
    raise SolveError("--workdir is required: a training run or a `hrm_jax.convert` "
                     "output.")
  given = [name for name, v in (("--sudoku", sudoku), ("--maze", maze), ("--arc", arc))
           if v is not None]
  if len(given) != 1:
    raise SolveError("Give exactly one puzzle: --sudoku=CELLS, --maze=FILE or "
                     f"--arc=TASK.json (got {', '.join(given) or 'none'}).")
  if halt_max_steps is not None and halt_max_steps < 1:
    raise SolveError(f"--halt_max_steps must be >= 1, got {halt_max_steps}.")
  try:
    sampling.check_options(num_samples, latent_noise, select, prefix="--")
    if arc is not None:
      sampling.check_family(select, "ARC", arc_data.check_answer, prefix="--")
  except ValueError as e:
    raise SolveError(str(e)) from None
  if sudoku is not None:
    puzzle = solve_input.parse_sudoku(sudoku)
  elif maze is not None:
    puzzle = solve_input.parse_maze(maze)
  else:
    puzzle = solve_input.parse_arc(arc)

  try:
    loaded = inference.load_workdir(workdir)
  except (FileNotFoundError, ValueError) as e:  # DataError, shape mismatches
    raise SolveError(f"Cannot load the model: {e}") from None
  M = halt_max_steps or loaded.model.config.halt_max_steps
  opts = dict(num_samples=num_samples, latent_noise=latent_noise, select=select,
              seed=sample_seed)
  if sudoku is not None:
    return solve_sudoku(loaded, puzzle, M, adaptive, **opts)
  if maze is not None:
    return solve_maze(loaded, puzzle, M, adaptive, **opts)
  return solve_arc(loaded, *puzzle, M, adaptive, arc_variants, batch_size, **opts)


def _define_flags() -> None:
  """Defined only when run as a program (as `convert` does), so importing
  this module never collides with another tool's flags."""
  flags.DEFINE_string("workdir", None, "A training run directory (its newest checkpoint) "
                      "or a `hrm_jax.convert` output.")
  flags.DEFINE_string("sudoku", None, "Board, row by row: 81 (or 36/16) cells, '.' or "
                      "'0' blank.")
  flags.DEFINE_string("maze", None, "Text file with the maze (rows of '# SG').")
  flags.DEFINE_string("arc", None, "ARC task JSON file; its test inputs are solved.")
  flags.DEFINE_integer("halt_max_steps", None, "Segments at most (default: the model's).")
  flags.DEFINE_bool("adaptive", False, "Halt by the Q head instead of running all "
                    "segments.")
  flags.DEFINE_integer("arc_variants", 0, "ARC: run at most this many augmented variants "
                       "of the task (0 = all the model was trained with).")
  flags.DEFINE_integer("batch_size", 64, "ARC: variants per forward pass.")
  flags.DEFINE_integer("num_samples", 1, "Trajectories run at once; one is the answer "
                       "(--select).")
  flags.DEFINE_float("latent_noise", 0.0, "Std of the Gaussian noise added to the latent "
                     "state before each segment (0 = none; the states have RMS ~1).")
  flags.DEFINE_enum("select", "q_halt", list(sampling.SELECT_RULES),
                    "Which sample is the answer: the highest q_halt, the most frequent, "
                    "or the most confident one the puzzle's rule check accepts.")
  flags.DEFINE_integer("sample_seed", 0, "Seeds the latent noise.")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")


def main(argv):
  # orbax's read-only-manager warnings would bury the answer; ours stay.
  tool_errors.tool_logging("hrm_jax.solve", argv)
  f = flags.FLAGS
  try:
    result = run(workdir=f.workdir, sudoku=f.sudoku, maze=f.maze, arc=f.arc,
                 halt_max_steps=f.halt_max_steps, adaptive=f.adaptive,
                 arc_variants=f.arc_variants, batch_size=f.batch_size,
                 num_samples=f.num_samples, latent_noise=f.latent_noise,
                 select=f.select, sample_seed=f.sample_seed)
  except (SolveError, OSError) as e:
    tool_errors.fail("hrm_jax.solve", e, hint=False)
  print(json.dumps(result) if f.json else format_text(result))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
