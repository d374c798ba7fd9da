"""`hrm_jax.analyze`: the participation ratio of data with a known spectrum, the
traced segment (bit-identical outputs, states in update order), residuals equal
to updates run by hand with the model's own L_update/H_update, and the command
end to end on a smoke run (with --compare_untrained, the visualize page, and the
one-line errors of a bad workdir)."""
# pylint: disable=invalid-name
import io
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import env_util
from hrm_jax import analyze, models, visualize
from hrm_jax import state as state_lib
from hrm_jax.data import puzzles
from hrm_jax.models import act


# ------------------------------------------------------- participation ratio


def _data_with_spectrum(N: int, F: int, singular: np.ndarray, seed: int) -> np.ndarray:
  """N x F data, centred, whose covariance has eigenvalues singular^2 / (N - 1)."""
  rng = np.random.default_rng(seed)
  k = len(singular)
  # Left factors orthonormal and orthogonal to the all-ones vector (centred rows).
  A = np.concatenate([np.ones((N, 1)), rng.standard_normal((N, k))], axis=1)
  U = np.linalg.qr(A)[0][:, 1:]
  V = np.linalg.qr(rng.standard_normal((F, k)))[0]
  return (U * singular) @ V.T + rng.standard_normal(F)  # plus a mean, removed by PR


@pytest.mark.parametrize("N,F", [(200, 40), (30, 500)])  # tall and wide
def test_participation_ratio_of_a_known_spectrum(N, F):
  singular = np.array([5.0, 3.0, 2.0, 1.0, 1.0, 0.5])
  X = _data_with_spectrum(N, F, singular, seed=N)
  eig = singular ** 2 / (N - 1)
  expected = eig.sum() ** 2 / np.sum(eig ** 2)
  np.testing.assert_allclose(analyze.participation_ratio(X), expected, rtol=1e-9)
  # Equal spectra: PR counts the dimensions; one direction: 1.
  np.testing.assert_allclose(analyze.participation_ratio(
      _data_with_spectrum(N, F, np.ones(7), seed=1)), 7.0, rtol=1e-9)
  np.testing.assert_allclose(analyze.participation_ratio(
      _data_with_spectrum(N, F, np.array([2.0]), seed=2)), 1.0, rtol=1e-9)


def test_participation_ratio_matches_the_covariance_eigenvalues():
  X = np.random.default_rng(0).standard_normal((300, 20)) @ np.diag(np.arange(1.0, 21.0))
  eig = np.linalg.eigvalsh(np.cov(X, rowvar=False))
  np.testing.assert_allclose(analyze.participation_ratio(X),
                             eig.sum() ** 2 / np.sum(eig ** 2), rtol=1e-9)
  counts = [10, 50, 300]
  np.testing.assert_allclose(analyze.pr_vs_count(X, counts),
                             [analyze.participation_ratio(X[:n]) for n in counts],
                             rtol=1e-9)


# ------------------------------------------------------------ traced segment


def _tiny(arch: str, scan: bool = True):
  """A float32 model with two cycles of three low-level updates."""
  fields = models.default_fields(arch)
  fields.update(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, scan=scan, H_cycles=2,
                L_cycles=3, halt_max_steps=2, forward_dtype="float32")
  if arch == "hrm":
    fields.update(H_layers=1, L_layers=1)
  else:
    fields.update(L_layers=1, puzzle_emb_len=1)
  cfg = models.make_config(fields, puzzles.DatasetShape(vocab_size=8, seq_len=16,
                                                         num_puzzle_identifiers=4))
  model = models.build(cfg)
  variables = models.family_of(cfg).init_variables(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  table = rng.standard_normal((4, cfg.puzzle_emb_ndim)).astype(np.float32)
  weights = state_lib.Weights(params=variables["params"], buffers=variables["buffers"],
                              puzzle_emb=jnp.asarray(table))
  inputs = rng.integers(0, 8, (3, 16)).astype(np.int32)
  ids = np.array([1, 2, 3], np.int32)
  return model, weights, inputs, ids


def _states(model, weights, inputs, ids):
  H_init, L_init = act.initial_states(model, weights.variables())
  shape = (len(inputs), model.config.num_positions, model.config.hidden_size)
  return (jnp.broadcast_to(H_init, shape), jnp.broadcast_to(L_init, shape),
          weights.puzzle_emb[ids])


@pytest.mark.parametrize("arch", ["hrm", "trm"])
def test_trace_leaves_the_segment_unchanged_and_ends_at_the_carry(arch):
  traces = {}
  for scan in (True, False):
    model, weights, inputs, ids = _tiny(arch, scan)
    z_H, z_L, rows = _states(model, weights, inputs, ids)
    segment = models.family_of(model.config).segment
    plain = jax.jit(lambda v, a, b, x, r: segment(model, v, a, b, x, r))(
        weights.variables(), z_H, z_L, inputs, rows)
    traced = jax.jit(lambda v, a, b, x, r: segment(model, v, a, b, x, r, trace=True))(
        weights.variables(), z_H, z_L, inputs, rows)
    assert len(plain) == 4 and len(traced) == 5
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(traced[:4])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit-identical
    states = traced[4]
    assert states["z_L"].shape == (6,) + z_L.shape  # H_cycles * L_cycles
    assert states["z_H"].shape == (2,) + z_H.shape
    np.testing.assert_array_equal(states["z_H"][-1], traced[0][0])
    np.testing.assert_array_equal(states["z_L"][-1], traced[0][1])
    traces[scan] = states
  for k in ("z_L", "z_H"):  # the scan and the Python loop trace the same states
    np.testing.assert_allclose(traces[True][k], traces[False][k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["hrm", "trm"])
def test_residuals_equal_updates_run_by_hand(arch):
  model, weights, inputs, ids = _tiny(arch)
  cfg, variables = model.config, weights.variables()
  segments = 2
  got = analyze.trace_run(model, weights, inputs, ids, segments, batch_size=2)

  inner = type(model)
  z_H, z_L, rows = _states(model, weights, inputs, ids)
  norm = lambda a: np.sqrt(np.sum(np.square(np.asarray(a, np.float64)), axis=(1, 2)))
  want_L, want_H = [], []
  for _ in range(segments):
    x = model.apply(variables, inputs, rows, method=inner.embed_input)
    for _ in range(cfg.H_cycles):
      for _ in range(cfg.L_cycles):
        new = model.apply(variables, z_L, z_H, x, method=inner.L_update)
        want_L.append(norm(new - z_L) / norm(z_L))
        z_L = new
      new = model.apply(variables, z_H, z_L, method=inner.H_update)
      want_H.append(norm(new - z_H) / norm(z_H))
      z_H = new
  assert got["residual_z_L"].shape == (segments * 6, 3)
  assert got["residual_z_H"].shape == (segments * 2, 3)
  np.testing.assert_allclose(got["residual_z_L"], np.stack(want_L), rtol=2e-4)
  np.testing.assert_allclose(got["residual_z_H"], np.stack(want_H), rtol=2e-4)
  np.testing.assert_allclose(got["final_z_H"], z_H, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got["final_z_L"], z_L, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ command


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """A 4-step 4x4 Sudoku smoke run (HRM), then `analyze --compare_untrained`."""
  workdir = tmp_path_factory.mktemp("sudoku_run")
  env_util.train_smoke(workdir, tmp_path_factory.mktemp("data"), "sudoku.py:smoke")
  proc = env_util.run_module("hrm_jax.analyze", f"--workdir={workdir}", "--compare_untrained",
              "--num_puzzles=24")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc.stdout


def test_command_writes_json_pngs_and_table(smoke_run):
  workdir, stdout = smoke_run
  out = workdir / "analysis"
  result = json.loads((out / "analysis.json").read_text())
  assert "PR(z_H)" in stdout and "untrained" in stdout and "analysis.json" in stdout
  assert result["arch"] == "hrm" and result["protocol"]["num_puzzles"] == 24
  M = result["protocol"]["segments_traced"]
  assert M == 2  # the smoke run's halt_max_steps (no eval override)
  for run in ("trained", "untrained"):
    r = result[run]
    # H_cycles 1 x L_cycles 2 per segment.
    assert len(r["residuals"]["z_L"]["mean"]) == 2 * M
    assert len(r["residuals"]["z_H"]["mean"]) == M
    assert all(v > 0 for k in ("z_L", "z_H") for v in r["residuals"][k]["mean"])
    pr = r["pr"]
    assert 1.0 <= pr["pr_z_H"] <= 23 and 1.0 <= pr["pr_z_L"] <= 23  # <= N - 1
    assert pr["ratio"] == pytest.approx(pr["pr_z_H"] / pr["pr_z_L"])
    assert pr["vs_puzzles"]["n"] == [8, 16, 24]
    assert pr["vs_puzzles"]["z_H"][-1] == pytest.approx(pr["pr_z_H"])
    act = r["act"]
    assert act["segments"] == list(range(1, 33)) and len(act["exact_accuracy"]) == 32
    assert act["adaptive"]["halt_max_steps"] == [4, 8, 16, 32]
    for m, used in zip([4, 8, 16, 32], act["adaptive"]["mean_segments"]):
      assert 1 <= used <= m
    # The traced segments and act.rollout compute the same answers.
    assert r["prediction_agreement"] == 1.0
    assert r["exact_accuracy_traced"] == act["exact_accuracy"][M - 1]
  # Fresh weights: the Q head starts at q_halt == q_continue, so it never halts.
  assert result["untrained"]["act"]["adaptive"]["mean_segments"] == [4, 8, 16, 32]
  assert result["untrained"]["pr"]["pr_z_H"] != result["trained"]["pr"]["pr_z_H"]
  names = [f["file"] for f in result["figures"]]
  assert names == ["residuals.png", "participation_ratio.png", "act_compute.png"]
  for name in names:
    with Image.open(io.BytesIO((out / name).read_bytes())) as image:
      assert image.format == "PNG" and image.width > 500


def test_visualize_page_includes_the_analysis(smoke_run, tmp_path):
  workdir, _ = smoke_run
  result = visualize.visualize(str(workdir), str(tmp_path), num_puzzles=1, num_halting=4)
  page = pathlib.Path(result["html"]).read_text()
  for heading, _, _ in analyze.html_sections(str(workdir)):
    assert f"<h2>{heading}</h2>" in page
  assert page.count("<h2>") == 3 + 3  # curves, act steps, one trajectory + analysis
  assert analyze.html_sections(str(tmp_path)) == []  # no analysis there


def _error_line(proc) -> str:
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  return proc.stderr.strip().splitlines()[-1]


def test_bad_workdirs_fail_with_one_line(smoke_run, tmp_path):
  workdir, _ = smoke_run
  line = _error_line(env_util.run_module("hrm_jax.analyze", f"--workdir={tmp_path}"))
  assert line.startswith("hrm_jax.analyze: error:") and "no config.json" in line

  no_ckpt = tmp_path / "no_checkpoint"
  no_ckpt.mkdir()
  for name in ("config.json", "dataset.json"):
    shutil.copy(workdir / name, no_ckpt / name)
  line = _error_line(env_util.run_module("hrm_jax.analyze", f"--workdir={no_ckpt}"))
  assert "has no checkpoint yet" in line

  moved = tmp_path / "dataset_gone"
  shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("analysis"))
  config = json.loads((moved / "config.json").read_text())
  config["data"]["source"] = f"npy:{tmp_path / 'nowhere'}"
  (moved / "config.json").write_text(json.dumps(config))
  line = _error_line(env_util.run_module("hrm_jax.analyze", f"--workdir={moved}"))
  assert "test split cannot be loaded" in line and "nowhere" in line
