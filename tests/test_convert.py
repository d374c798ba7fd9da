"""Converting PyTorch HRM checkpoints (hrm_jax.convert) and loading the result.

The fixture state dicts of tests/testdata stand in for a released checkpoint:
a converted and reloaded copy must reproduce, bit for bit, what the parity
tests compute from the same tensors, and the original PyTorch outputs.
"""
# pylint: disable=invalid-name
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from hrm_jax import convert, torch_import, torch_names, workdir
import parity_util as pu

PREFIX = "_orig_mod.model."
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FORWARD_TOL = 1e-4


def prefixed_state(fx):
  """The fixture's tensors named as `torch.save(ACTLossHead.state_dict())` names them."""
  return {PREFIX + k.split("/", 1)[1]: v for k, v in fx.items()
          if k.startswith(("param/", "buffer/"))}


def reference_yaml(fx) -> str:
  """An all_config.yaml as the reference's pretrain.py dumps it (PretrainConfig)."""
  c = json.loads(str(fx["config_json"]))
  arch = {k: c[k] for k in ("H_cycles", "L_cycles", "H_layers", "L_layers",
                            "hidden_size", "expansion", "num_heads", "pos_encodings",
                            "puzzle_emb_ndim", "halt_max_steps",
                            "halt_exploration_prob")}
  arch["name"] = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
  arch["loss"] = {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}
  lines = ["arch:"]
  for key, value in arch.items():
    if isinstance(value, dict):
      lines.append(f"  {key}:")
      lines += [f"    {k}: {v}" for k, v in value.items()]
    else:
      lines.append(f"  {key}: {value}")
  lines += ["beta1: 0.9", "data_path: data/does-not-exist", "global_batch_size: 4"]
  return "\n".join(lines) + "\n"


def fixture_overrides(fx):
  """What neither the tensors nor all_config.yaml hold: seq_len (RoPE), dtype."""
  c = json.loads(str(fx["config_json"]))
  overrides = {"forward_dtype": c["forward_dtype"]}
  if c["pos_encodings"] == "rope":
    overrides["seq_len"] = c["seq_len"]
  return overrides


def load_converted(directory):
  """(model config, variables, puzzle table) of a converted workdir, as `solve` loads it."""
  trained = workdir.load_weights(directory)
  return trained.model.config, trained.weights.variables(), trained.weights.puzzle_emb


def assert_matches_parity_path(fx, cfg, variables, table):
  """Same outputs as parity_util's own conversion, and as PyTorch."""
  expected_cfg = pu.config_from_fixture(fx)
  assert cfg == expected_cfg
  ref_vars, ref_table = pu.variables_from_fixture(fx, expected_cfg)
  jax.tree.map(np.testing.assert_array_equal, variables, ref_vars)
  np.testing.assert_array_equal(table, ref_table)
  # Equal inputs already imply equal outputs; one (cheap, gradient-free) segment
  # checks it end to end anyway, against both paths.
  batch = pu.batch_from_fixture(fx)
  [(_, outputs, _)] = pu.eval_steps(cfg, variables, table, batch, num_steps=1)
  [(_, ref_outputs, _)] = pu.eval_steps(expected_cfg, ref_vars, ref_table, batch,
                                        num_steps=1)
  for key in ("logits", "q_halt_logits"):
    np.testing.assert_array_equal(outputs[key], ref_outputs[key], err_msg=key)
    assert pu.rel_err(outputs[key], fx[f"eval/0/{key}"]) < FORWARD_TOL, key


# --- (a) Without torch. -------------------------------------------------------


@pytest.mark.parametrize("name", ["rope", "learned"])
def test_round_trip_through_orbax(tmp_path, name):
  fx = pu.load_fixture(name)
  yaml_path = tmp_path / "all_config.yaml"
  yaml_path.write_text(reference_yaml(fx))
  cfg = convert.convert_state_dict(
      prefixed_state(fx), tmp_path / "out",
      reference=torch_import.read_reference_config(yaml_path),
      overrides=fixture_overrides(fx))
  loaded_cfg, variables, table = load_converted(tmp_path / "out")
  assert loaded_cfg == cfg
  assert_matches_parity_path(fx, loaded_cfg, variables, table)
  provenance = json.loads((tmp_path / "out" / convert.PROVENANCE_FILE).read_text())
  assert provenance["hidden_size"] == "tensors"
  assert provenance["L_cycles"] == "all_config.yaml"
  if name == "learned":  # seq_len comes from embed_pos, not from an override
    assert provenance["seq_len"] == "tensors"


def test_infers_shapes_from_tensors():
  fx = pu.load_fixture("learned")
  converted = torch_names.torch_state_to_variables(prefixed_state(fx))
  cfg, _ = torch_import.infer_config(converted, overrides={"num_heads": "4"})
  c = json.loads(str(fx["config_json"]))
  for key in ("hidden_size", "H_layers", "L_layers", "vocab_size", "seq_len",
              "num_puzzle_identifiers", "puzzle_emb_ndim", "pos_encodings"):
    assert getattr(cfg, key) == c[key], key
  assert cfg.num_heads == 4  # the override string was converted to int


def test_unknown_key_is_named():
  state = prefixed_state(pu.load_fixture("rope"))
  state[PREFIX + "inner.extra_head.weight"] = np.zeros((2, 4))
  with pytest.raises(KeyError, match=r"inner\.extra_head\.weight"):
    torch_names.torch_state_to_variables(state)
  with pytest.raises(KeyError, match=r"inner\.extra_head\.weight"):
    convert.convert_state_dict(state, "/nonexistent/never-written")


def test_unknown_projection_inside_a_layer_is_named(tmp_path):
  # The layer pattern maps any `<block>.<proj>.weight`; the shape check is what
  # rejects a projection our blocks do not have (e.g. a later variant's k_norm).
  state = prefixed_state(pu.load_fixture("rope"))
  state[PREFIX + "inner.H_level.layers.0.self_attn.k_norm.weight"] = np.zeros((4, 4))
  with pytest.raises(ValueError, match=r"self_attn/k_norm/kernel.*not in a model"):
    convert.convert_state_dict(state, tmp_path, overrides={"seq_len": 16, "num_heads": 4})


def test_rope_without_seq_len_asks_for_it(tmp_path):
  state = prefixed_state(pu.load_fixture("rope"))
  with pytest.raises(ValueError, match=r"--override=seq_len"):
    convert.convert_state_dict(state, tmp_path / "out", overrides={"num_heads": 4})
  assert not (tmp_path / "out").exists()


def test_shape_inconsistencies_are_reported(tmp_path):
  fx = pu.load_fixture("rope")
  overrides = {"seq_len": 16, "num_heads": 4}
  # A damaged layer.
  state = prefixed_state(fx)
  name = PREFIX + "inner.L_level.layers.1.mlp.down_proj.weight"
  state[name] = state[name][:, :128]
  with pytest.raises(ValueError, match=r"L_level/layers_1/mlp/down_proj/kernel"):
    convert.convert_state_dict(state, tmp_path / "a", overrides=overrides)
  # A wrong guess for a field the tensors only constrain (the MLP width).
  with pytest.raises(ValueError, match=r"gate_up_proj"):
    convert.convert_state_dict(prefixed_state(fx), tmp_path / "b",
                               overrides={**overrides, "expansion": 8})
  # A yaml from another run.
  yaml_path = tmp_path / "all_config.yaml"
  yaml_path.write_text(reference_yaml(fx).replace("hidden_size: 64", "hidden_size: 512"))
  with pytest.raises(ValueError, match=r"hidden_size=512 .* hidden_size=64"):
    convert.convert_state_dict(prefixed_state(fx), tmp_path / "c",
                               reference=torch_import.read_reference_config(yaml_path),
                               overrides=overrides)
  # A gap in the layer numbering.
  state = {k: v for k, v in prefixed_state(fx).items() if ".H_level.layers.0." not in k}
  with pytest.raises(ValueError, match=r"H layers are numbered \[1\]"):
    convert.convert_state_dict(state, tmp_path / "d", overrides=overrides)


def test_refuses_to_overwrite(tmp_path):
  fx = pu.load_fixture("learned")
  overrides = {"num_heads": 4, "forward_dtype": "float32"}
  convert.convert_state_dict(prefixed_state(fx), tmp_path, overrides=overrides)
  with pytest.raises(FileExistsError, match=r"--overwrite"):
    convert.convert_state_dict(prefixed_state(fx), tmp_path, overrides=overrides)
  convert.convert_state_dict(prefixed_state(fx), tmp_path, overrides=overrides,
                             overwrite=True)


def test_load_converted_errors(tmp_path):
  with pytest.raises(workdir.WorkdirError, match=r"no config.json and no checkpoints/"):
    load_converted(tmp_path)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "hrm_jax.convert", *args],
                        capture_output=True, text=True, cwd=REPO_ROOT,
                        env=dict(os.environ), check=False, timeout=300)


def test_cli_missing_file(tmp_path):
  result = run_cli(f"--torch_checkpoint={tmp_path / 'step_1'}", f"--out={tmp_path / 'o'}")
  assert result.returncode != 0
  assert "No PyTorch checkpoint file" in result.stderr


# --- (b) With torch. ----------------------------------------------------------


def save_torch_state(path, state, dtypes=None):
  torch = pytest.importorskip("torch")
  dtypes = dtypes or {}
  torch.save({k: torch.from_numpy(np.array(v)).to(dtypes.get(k, torch.float32))
              for k, v in state.items()}, path)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["rope", "learned"])
def test_cli_converts_a_torch_checkpoint(tmp_path, name):
  pytest.importorskip("torch", reason="needs the optional torch extra "
                      "(pip install 'hrm_jax[torch]') to write a .pt checkpoint")
  fx = pu.load_fixture(name)
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  save_torch_state(run_dir / "step_7", prefixed_state(fx))
  (run_dir / "all_config.yaml").write_text(reference_yaml(fx))  # found as a sibling
  flags = [f"--override={k}={v}" for k, v in fixture_overrides(fx).items()]
  result = run_cli(f"--torch_checkpoint={run_dir / 'step_7'}",
                   f"--out={tmp_path / 'out'}", *flags)
  assert result.returncode == 0, result.stderr
  cfg, variables, table = load_converted(tmp_path / "out")
  assert_matches_parity_path(fx, cfg, variables, table)


@pytest.mark.torch
def test_bf16_buffers_and_errors_of_torch_files(tmp_path):
  torch = pytest.importorskip("torch", reason="needs the optional torch extra")
  state = prefixed_state(pu.load_fixture("rope"))
  # The reference keeps H_init/L_init in bf16: numpy has no bf16, so the loader
  # must widen them to float32 (exactly) rather than fail.
  path = tmp_path / "step_1"
  save_torch_state(path, state, {PREFIX + "inner.H_init": torch.bfloat16})
  loaded = torch_import.load_torch_state_dict(path)
  assert loaded[PREFIX + "inner.H_init"].dtype == np.float32
  expected = torch.tensor(state[PREFIX + "inner.H_init"]).to(torch.bfloat16).float()
  np.testing.assert_array_equal(loaded[PREFIX + "inner.H_init"], expected.numpy())
  np.testing.assert_array_equal(loaded[PREFIX + "inner.L_init"],
                                state[PREFIX + "inner.L_init"])
  # Not a state dict.
  torch.save([torch.zeros(2)], tmp_path / "list.pt")
  with pytest.raises(TypeError, match=r"not a state dict"):
    torch_import.load_torch_state_dict(tmp_path / "list.pt")
  # An unknown tensor, through the CLI: a clear message and a non-zero exit.
  state[PREFIX + "inner.extra_head.weight"] = np.zeros((2, 2), np.float32)
  save_torch_state(tmp_path / "step_2", state)
  result = run_cli(f"--torch_checkpoint={tmp_path / 'step_2'}",
                   f"--out={tmp_path / 'o'}", "--override=seq_len=16")
  assert result.returncode != 0
  assert "inner.extra_head.weight" in result.stderr


@pytest.mark.parametrize("name", ["att", "mlp"])
def test_trm_state_dicts_convert(tmp_path, name):
  """A TRM state dict in the released key format (no H_level; mlp_t in the MLP
  variant) becomes a TRM workdir whose model reproduces the original's outputs."""
  import trm_parity_util as tu  # pylint: disable=import-outside-toplevel
  fx = tu.load_fixture(name)
  c = tu.fixture_json(fx)
  state = {PREFIX + k: v for k, v in tu.torch_state(fx).items()}
  overrides = {k: c[k] for k in ("H_cycles", "L_cycles", "num_heads", "halt_max_steps",
                                 "halt_exploration_prob", "forward_dtype",
                                 "puzzle_emb_len")}
  if c["pos_encodings"] == "rope":
    overrides["seq_len"] = c["seq_len"]  # the weights fix L only for mlp_t / learned
  cfg = convert.convert_state_dict(state, tmp_path / "out", overrides=overrides)
  assert cfg == tu.config_from_fixture(fx)
  loaded_cfg, variables, table = load_converted(tmp_path / "out")
  assert loaded_cfg == cfg and loaded_cfg.ARCH == "trm"
  [(_, outputs, _, _)] = tu.eval_steps(cfg, variables, table, tu.batch_from_fixture(fx), 1)
  for key in ("logits", "q_halt_logits"):
    assert pu.rel_err(outputs[key], fx[f"eval/0/{key}"]) < FORWARD_TOL, key
