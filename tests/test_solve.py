"""`hrm_jax.solve`: a model that really learned solves held-out puzzles; bad
input fails with a message naming the problem.

The fixture runs the real trainer CLI on 4x4 Sudoku with one blank per board
for 800 steps (~12 s on 2 CPU cores, most of it data building and
compilation). That task is easy but not trivial:
the model must find the one digit missing from a row/column/box, and a
2-step smoke model gets it wrong (exact accuracy 0), so "solve returns a
valid solution equal to the unique answer" is an honest end-to-end check of
restore -> predict -> decode -> validate.
"""
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import env_util
from hrm_jax import convert, data, inference, metric_writers, solve, torch_names, train
from hrm_jax import workdir as workdir_lib
from hrm_jax.data import arc as arc_data
from hrm_jax.data import arc_tasks
from hrm_jax.data import maze as maze_data
from hrm_jax.data import sudoku as sudoku_data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# Overrides of experiments/sudoku.py:smoke (4x4 boards, tiny HRM, M = 2).
LEARNABLE = {
    "data.num_blanks": 1, "data.train_size": 256, "data.num_aug": 0,
    "data.test_size": 32, "opt.lr": 1e-3, "opt.puzzle_emb_lr": 1e-3,
    "opt.weight_decay": 0.1, "opt.lr_warmup_steps": 10, "total_steps": 800,
    # A constant lr left exact accuracy swinging 72-100% between evaluations (and
    # below the fixture's 90% bar on one machine kind); the cosine decay settles it.
    "opt.lr_min_ratio": 0.1,
    "eval.every_steps": 800, "ckpt.every_steps": 800, "log_every_steps": 100,
}


def train_smoke(experiment, workdir, data_dir, overrides):
  """The real trainer CLI, in a subprocess; returns the saved run config."""
  args = [f"--config.{k}={v}" for k, v in overrides.items()]
  proc = subprocess.run(
      [sys.executable, "-m", "hrm_jax.main", f"--config=experiments/{experiment}:smoke",
       f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *args],
      capture_output=True, text=True, cwd=REPO_ROOT, env=env_util.single_device_env(),
      check=False, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir_lib.read_config(workdir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, held-out puzzles [K,4,4], their solutions) of a trained model."""
  workdir = tmp_path_factory.mktemp("solve_run")
  config = train_smoke("sudoku.py", workdir, tmp_path_factory.mktemp("data"), LEARNABLE)
  evals = [r for r in metric_writers.read_jsonl_metrics(workdir)
           if "eval/exact_accuracy" in r]
  assert evals[-1]["eval/exact_accuracy"] > 0.9, evals  # it did learn
  train_inputs = {bytes(x) for x in data.load(config.data, "train").inputs}
  test = data.load(config.data, "test")
  held_out = [i for i, x in enumerate(test.inputs) if bytes(x) not in train_inputs]
  assert len(held_out) >= 3
  boards = np.stack([sudoku_data.decode(test.inputs[i]) for i in held_out[:3]])
  answers = np.stack([sudoku_data.decode(test.labels[i]) for i in held_out[:3]])
  return str(workdir), boards, answers


def _text(board):
  return "".join(str(d) if d else "." for d in board.reshape(-1))


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "hrm_jax.solve", *args],
                        capture_output=True, text=True, cwd=REPO_ROOT,
                        env=dict(os.environ), check=False, timeout=300)


def test_solves_held_out_sudoku(run):
  workdir, boards, answers = run
  for board, answer in zip(boards, answers):
    result = solve.run(workdir=workdir, sudoku=_text(board))
    assert result["valid"], result
    np.testing.assert_array_equal(result["solution"], answer)
    assert result["segments"] == result["halt_max_steps"] == 2  # no --adaptive
  assert "Valid: yes" in solve.format_text(result)


def test_json_cli_with_adaptive_halting(run):
  workdir, boards, answers = run
  proc = _cli(f"--workdir={workdir}", f"--sudoku={_text(boards[0])}", "--adaptive",
              "--json")
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout)
  assert result["valid"] and result["unique_solution"] and result["adaptive_halting"]
  np.testing.assert_array_equal(result["solution"], answers[0])
  assert 1 <= result["segments"] <= result["halt_max_steps"]
  assert 0.0 <= result["q_halt_confidence"] <= 1.0


def test_wrong_answer_is_reported_invalid(run, monkeypatch):
  """The validity check can fail: feed a wrong prediction through solve."""
  workdir, boards, answers = run
  wrong = answers[0].copy()
  r, c = np.argwhere(boards[0] == 0)[0]
  wrong[r, c] = wrong[r, c] % 4 + 1
  real_predict = inference.predict

  def fake_predict(*args, **kwargs):
    out = real_predict(*args, **kwargs)
    out["predictions"] = sudoku_data.encode(wrong)[None].astype(np.int32)
    return out

  monkeypatch.setattr(inference, "predict", fake_predict)
  result = solve.run(workdir=workdir, sudoku=_text(boards[0]))
  assert not result["valid"]
  assert "not a permutation" in result["problem"]
  assert "Valid: NO" in solve.format_text(result)


def _released_state_dict(loaded):
  """Our weights under the original's state-dict names (as a released
  `torch.save(model.state_dict())` names them), numpy [out, in] kernels."""
  w = jax.device_get(loaded.weights)
  state = {}
  for name, (path, transpose) in torch_names._DIRECT.items():  # pylint: disable=protected-access
    node = w.params
    for key in path:
      node = node.get(key) if isinstance(node, dict) else None
    if node is not None:
      state[name] = np.asarray(node).T if transpose else np.asarray(node)
  for level in ("H", "L"):
    for layer, blocks in w.params[f"{level}_level"].items():
      for block, projs in blocks.items():
        for proj, leaf in projs.items():
          i = layer[len("layers_"):]
          state[f"inner.{level}_level.layers.{i}.{block}.{proj}.weight"] = (
              np.asarray(leaf["kernel"]).T)
  state["inner.H_init"] = np.asarray(w.buffers["H_init"], np.float32)
  state["inner.L_init"] = np.asarray(w.buffers["L_init"], np.float32)
  state["inner.puzzle_emb.weights"] = np.asarray(w.puzzle_emb)
  return {"_orig_mod.model." + k: v for k, v in state.items()}


@pytest.fixture(scope="module")
def converted(run, tmp_path_factory):
  """The trained model through `convert` from a state dict in the released format."""
  workdir = run[0]
  loaded = inference.load_workdir(workdir)
  cfg = loaded.model.config
  out = tmp_path_factory.mktemp("converted") / "out"
  overrides = {k: getattr(cfg, k) for k in ("seq_len", "num_heads", "H_cycles", "L_cycles",
                                            "halt_max_steps", "forward_dtype")}
  convert.convert_state_dict(_released_state_dict(loaded), out, overrides=overrides,
                             family="sudoku")
  return str(out), loaded


def test_converted_checkpoint_gives_the_same_answer(run, converted):
  """A released checkpoint's format, converted, runs the same model with no extra flags."""
  _, boards, answers = run
  result = solve.run(workdir=converted[0], sudoku=_text(boards[0]))
  assert result["valid"] and result["checkpoint_step"] == 0
  np.testing.assert_array_equal(result["solution"], answers[0])


def test_converted_checkpoint_initialises_a_run(run, converted, tmp_path):
  """--config.init_from=<converted dir>: a fresh run starts from those weights
  (lr 0 keeps them bit for bit through one update)."""
  from experiments import sudoku  # pylint: disable=import-outside-toplevel
  config = sudoku.get_config("smoke")
  config.data.data_dir = str(tmp_path / "data")
  config.init_from = converted[0]
  config.total_steps = 1
  config.opt.lr = config.opt.puzzle_emb_lr = 0.0
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  trained = jax.device_get(converted[1].weights.params)
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(jax.device_get(result.state.params))):
    np.testing.assert_array_equal(a, b)


def test_size_and_family_mismatch_are_explained(run, tmp_path):
  workdir = run[0]
  with pytest.raises(solve.SolveError, match=r"9x9 Sudoku.*model solves 4x4 Sudoku"):
    solve.run(workdir=workdir, sudoku="." * 80 + "1")
  maze = tmp_path / "maze.txt"
  maze.write_text("####\n#SG#\n#  #\n####\n")
  with pytest.raises(solve.SolveError, match=r"trained on sudoku.*gave a maze"):
    solve.run(workdir=workdir, maze=str(maze))


def test_maze_path_check():
  grid = lambda text: maze_data.encode(text).reshape(5, 5)
  maze = grid("#####" "#S  #" "### #" "#G  #" "#####")
  solved = grid("#####" "#Soo#" "###o#" "#Goo#" "#####")
  assert maze_data.path_problem(maze, solved) is None
  broken = grid("#####" "#Soo#" "### #" "#Goo#" "#####")
  assert "do not connect S to G" in maze_data.path_problem(maze, broken)
  through_wall = grid("#####" "#Soo#" "###o#" "#Goo#" "###o#")
  assert "differ from the maze" in maze_data.path_problem(maze, through_wall)
  detour_maze = grid("#####" "#S  #" "# # #" "#G  #" "#####")
  assert maze_data.path_problem(detour_maze, grid("#####" "#S  #" "#o# #" "#G  #"
                                                  "#####")) is None
  extra = grid("#####" "#So #" "#o# #" "#G  #" "#####")  # the shortest path and one more
  assert "1 'o' cell(s) beyond" in maze_data.path_problem(detour_maze, extra)
  longer = grid("#####" "#Soo#" "# #o#" "#Goo#" "#####")
  assert "not a shortest path (2 moves)" in maze_data.path_problem(detour_maze, longer)


def _fake_arc_model(identifiers):
  model = types.SimpleNamespace(config=types.SimpleNamespace(
      seq_len=arc_data.SEQ_LEN, vocab_size=arc_data.VOCAB_SIZE, halt_max_steps=2))
  run_config = types.SimpleNamespace(data=types.SimpleNamespace(family="arc"))
  return inference.Loaded(model=model, weights=None, config=run_config, metadata=None,
                          identifiers=identifiers, step=1, directory="fake")


def test_arc_votes_map_every_variant_back(monkeypatch):
  """An oracle that answers each augmented variant in its own frame: solve
  must undo every augmentation, agree on one grid and call it correct."""
  truth = np.array([[1, 2, 3], [4, 5, 6]])
  test_input = np.array([[7, 8], [9, 0]])
  task = arc_tasks.Task("abc", "", [], [(test_input, truth)])
  names = ["<blank>", "abc", "abc_t3_0213456789", "abc_t6_0987654321", "other"]

  def oracle(loaded, inputs_BxS, ids_B, **kwargs):
    del kwargs
    rows = []
    for pid in np.asarray(ids_B).tolist():
      _, t, cmap = arc_data.parse_name(loaded.identifiers[pid])
      rows.append(arc_data.encode_grid(arc_data.augment_grid(truth, t, cmap)) if pid
                  else np.zeros(arc_data.SEQ_LEN, np.uint8))
    B = len(rows)
    return {"predictions": np.stack(rows), "steps": np.full(B, 2),
            "q_halt_confidence": np.full(B, 0.9)}

  monkeypatch.setattr(inference, "predict", oracle)
  result = solve.solve_arc(_fake_arc_model(names), task, [True], 2, False, batch_size=2)
  assert result["puzzle_identifiers"] == [1, 2, 3]
  [test] = result["tests"]
  assert test["votes"] == [3] and test["correct_top1"] and test["correct_top2"]
  np.testing.assert_array_equal(test["attempts"][0], truth)

  unknown = arc_tasks.Task("zzz", "", [], [(test_input, truth)])
  result = solve.solve_arc(_fake_arc_model(names), unknown, [False], 2, False)
  assert result["puzzle_identifiers"] == [0]
  assert "not among the model's 5 puzzle identifiers" in result["notes"][0]
  assert result["tests"][0]["correct_top1"] is None  # no output given
  assert "ARC task zzz" in solve.format_text(result)


BAD_MAZES = {
    "ragged": ("#####\n#S  #\n# G#\n#   #\n#####\n", r"ragged rows"),
    "two_s": ("#####\n#S S#\n# G #\n#   #\n#####\n", r"exactly one 'S', found 2"),
    "bad_char": ("#####\n#S x#\n# G #\n#   #\n#####\n", r"row 2: unknown character 'x'"),
    "not_square": ("#####\n#S G#\n#####\n", r"must be square"),
}


@pytest.mark.parametrize("name", sorted(BAD_MAZES))
def test_bad_maze_files(name, tmp_path):
  text, message = BAD_MAZES[name]
  path = tmp_path / "maze.txt"
  path.write_text(text)
  with pytest.raises(solve.SolveError, match=message):
    solve.run(workdir="unused", maze=str(path))  # fails before any loading


@pytest.mark.parametrize("sudoku,message", [
    ("123", r"3 characters; expected 81"),
    ("31024231241313x4", r"unknown character 'x' at position 14"),
    ("3302423124131324", r"row 1 repeats 3"),
    ("3142423124131324", r"no blank cell"),
])
def test_bad_sudoku_strings(sudoku, message):
  with pytest.raises(solve.SolveError, match=message):
    solve.run(workdir="unused", sudoku=sudoku)


def test_bad_arc_files(tmp_path):
  bad_json = tmp_path / "bad.json"
  bad_json.write_text('{"train": [], "test": [')
  with pytest.raises(solve.SolveError, match=r"not valid JSON"):
    solve.run(workdir="unused", arc=str(bad_json))
  bad_grid = tmp_path / "t.json"
  bad_grid.write_text(json.dumps({"train": [], "test": [{"input": [[1, 2], [3]]}]}))
  with pytest.raises(solve.SolveError, match=r"ragged grid"):
    solve.run(workdir="unused", arc=str(bad_grid))
  with pytest.raises(solve.SolveError, match=r"not found"):
    solve.run(workdir="unused", arc=str(tmp_path / "missing.json"))


def test_cli_bad_input_exits_non_zero_without_traceback(tmp_path):
  proc = _cli(f"--workdir={tmp_path}", "--sudoku=31024231241313x4")
  assert proc.returncode != 0
  assert "unknown character 'x' at position 14" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_checkpoint(tmp_path):
  with pytest.raises(solve.SolveError, match=r"no checkpoints/ directory"):
    solve.run(workdir=str(tmp_path), sudoku="3102423124131324")


def test_solve_needs_the_workdir_only(run, monkeypatch):
  """dataset.json in the workdir carries vocab, length and puzzle ids: solving
  never touches the run's dataset (which may be gone, or a user's CSVs)."""
  workdir, boards, answers = run
  info = json.loads((pathlib.Path(workdir) / "dataset.json").read_text())
  assert info["metadata"]["seq_len"] == 16 and info["identifiers"][0] == "<blank>"

  def no_data(*args, **kwargs):
    raise AssertionError(f"the dataset was read: {args}")

  monkeypatch.setattr(data, "load", no_data)
  result = solve.run(workdir=workdir, sudoku=_text(boards[1]))
  np.testing.assert_array_equal(result["solution"], answers[1])


def test_sampled_solve_reports_the_checker(run):
  """K noisy trajectories, the answer chosen by the rule check: accepted, seeded."""
  workdir, boards, answers = run
  kwargs = dict(workdir=workdir, sudoku=_text(boards[0]), num_samples=4, latent_noise=0.2,
                select="checker", sample_seed=3)
  result = solve.run(**kwargs)
  assert result["num_samples"] == 4 and result["select"] == "checker"
  assert result["valid"] and result["checker_accepts"] and not result["unsure"]
  assert 1 <= result["samples_accepted"] <= 4 and 1 <= result["distinct_answers"] <= 4
  np.testing.assert_array_equal(result["solution"], answers[0])
  text = solve.format_text(result)
  assert "Samples: 4 trajectories (latent noise 0.2), answer chosen by checker" in text
  assert f"Checker: accepts the chosen answer ({result['samples_accepted']} of 4" in text
  assert solve.run(**kwargs) == result  # the same seed, the same samples


def test_checker_that_accepts_nothing_is_unsure(run, monkeypatch):
  workdir, boards, _ = run
  monkeypatch.setattr(inference.sampling, "accepted",
                      lambda check, inputs, preds: np.zeros(preds.shape[:2], bool))
  result = solve.run(workdir=workdir, sudoku=_text(boards[1]), num_samples=3,
                     latent_noise=0.3, select="checker")
  assert result["unsure"] and result["samples_accepted"] == 0
  assert "unsure: no sample passed the check" in solve.format_text(result)


@pytest.mark.parametrize("kwargs,message", [
    (dict(sudoku="3102423124131324", num_samples=0), r"--num_samples=0: use an integer"),
    (dict(sudoku="3102423124131324", latent_noise=-0.5), r"--latent_noise=-0.5"),
    (dict(sudoku="3102423124131324", select="best"), r"--select='best'"),
])
def test_bad_sampling_options(kwargs, message):
  with pytest.raises(solve.SolveError, match=message):
    solve.run(workdir="unused", **kwargs)  # fails before any loading


def test_arc_has_no_checker(tmp_path):
  task = tmp_path / "t.json"
  task.write_text(json.dumps({"train": [], "test": [{"input": [[1]]}]}))
  with pytest.raises(solve.SolveError, match=r"--select='checker' needs a rule check, and "
                     r"ARC puzzles have none.*'vote'"):
    solve.run(workdir="unused", arc=str(task), select="checker")


def test_cli_sampling_flags(run):
  workdir, boards, answers = run
  proc = _cli(f"--workdir={workdir}", f"--sudoku={_text(boards[2])}", "--num_samples=3",
              "--latent_noise=0.1", "--select=vote", "--json")
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout)
  assert result["num_samples"] == 3 and result["select"] == "vote"
  assert result["latent_noise"] == pytest.approx(0.1)
  np.testing.assert_array_equal(result["solution"], answers[2])
