"""Every experiment variant starts (issue 20): the paper configs too, not only `:cpu`.

Two tiers:
* every variant's data config, as the experiment file gives it (paper scale, no
  override), gets its TFDS builder: the paper defaults are also the builders'
  predefined configs, which TFDS once refused to hand out ("Cannot name a custom
  BuilderConfig the same as an available BuilderConfig") — the crash every paper
  config hit at start;
* every variant runs `python -m hrm_jax.main` up to and through its first train
  step (flags, config checks, the data build, the model of its family, the
  compiled step, one update, the checkpoint): the paper-scale model as it is, with
  only the data (a few puzzles, same shapes) and the batch shrunk (its own
  grad_accum_steps kept), stopped by `config.stop_at_step=1` (slow: ~10 minutes).
"""
import json
import pathlib
import re

import pytest
import tensorflow_datasets as tfds

import env_util
from experiments import common
from hrm_jax.data import builders
from hrm_jax.data import config as data_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Combinations the experiment files' docstrings and README document, beside each token.
COMBINATIONS = {"arc.py": ["trm,arc2", "arc2,1gpu", "arc2,cpu", "tta,cpu", "baseline,arc2",
                           "baseline,cpu"],
                "sudoku.py": ["trm,cpu"], "maze.py": ["trm,cpu"]}


def _variants() -> list[tuple[str, str]]:
  out = []
  for e in common.list_experiments():
    name = pathlib.Path(e.path).name
    out += [(name, "")] + [(name, v) for v in e.variants]
    out += [(name, v) for v in COMBINATIONS.get(name, [])]
  return out


VARIANTS = _variants()


def _config(name: str, variant: str):
  return common.load_experiment(str(ROOT / "experiments" / name)).get_config(variant or None)


def test_every_experiment_file_is_covered():
  names = {n for n, _ in VARIANTS}
  assert {"sudoku.py", "maze.py", "arc.py"} <= names
  assert ("maze.py", "") in VARIANTS and ("arc.py", "trm,arc2") in VARIANTS


@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}:{v}" for n, v in VARIANTS])
def test_the_data_builder_of_every_variant(name, variant, tmp_path):
  config = _config(name, variant)
  data = config.data
  data.data_dir = str(tmp_path)  # not hashed: the same builder config
  data.num_workers = 3  # how a build runs, not what it builds: not the config's identity
  builder = builders.builder_for(data)
  assert builder.builder_config.name == data_config.config_name(data)
  assert json.loads(builder.builder_config.fields_json) == data_config.data_fields(data)
  assert builder.name == f"hrm_{data.family}"


def test_the_baseline_variant_is_the_original_with_12_heads():
  """`arc.py:baseline`: the TRM repo's transformers_baseline.yaml on ARC-AGI-1 (8 blocks,
  hidden 512, 12 heads of 42: q, k, v and o_proj 504 wide), 27,145,218 parameters;
  the family's defaults otherwise, and HRM's data and optimiser."""
  import jax  # pylint: disable=import-outside-toplevel
  from hrm_jax import data, models  # pylint: disable=import-outside-toplevel
  config = _config("arc.py", "baseline")
  paper = _config("arc.py", "")
  assert config.model.arch == "transformer" and config.model.num_heads == 12
  assert {**config.model.to_dict(), "num_heads": 8} == models.default_fields("transformer")
  for group in ("data", "opt"):
    assert config[group].to_dict() == paper[group].to_dict(), group
  assert config.batch_size == paper.batch_size and config.epochs == paper.epochs
  model_cfg = models.make_config(config.model, data.shape(config.data))
  family = models.family_of(model_cfg)
  shapes = jax.eval_shape(lambda k: family.init_variables(models.build(model_cfg), k),
                          jax.random.key(0))
  attention = shapes["params"]["H_level"]["layers_0"]["self_attn"]
  assert attention["qkv_proj"]["kernel"].shape == (512, 3 * 12 * 42)
  assert models.count_params(shapes["params"]) == 27_145_218
  with pytest.raises(ValueError, match="two model families"):
    _config("arc.py", "trm,baseline")


def test_the_paper_defaults_are_the_predefined_builder_configs(tmp_path):
  """A paper run's config *is* the predefined one, and tfds.builder finds it by name."""
  for family in ("sudoku", "maze", "arc"):
    cfg = data_config.default_config(family)
    cfg.data_dir = str(tmp_path)
    predefined = builders.BUILDERS[family].BUILDER_CONFIGS[0]
    assert builders.builder_for(cfg).builder_config is predefined
    by_name = tfds.builder(f"hrm_{family}/{predefined.name}", data_dir=str(tmp_path))
    assert by_name.builder_config is predefined


def _shrink(config) -> list[str]:
  """Overrides that make the data a few puzzles (same shapes) and the batch the
  smallest one the variant's grad_accum_steps allows on one device."""
  family = config.data.family
  data = {"sudoku": ["train_size=4", "test_size=2", "num_aug=1"],
          "maze": ["train_size=2", "test_size=2"],
          "arc": ["max_tasks_per_subset=1", "num_aug=1"]}[family]
  rows = max(2, config.grad_accum_steps)
  return [*(f"--config.data.{o}" for o in data), "--config.data.num_workers=1",
          f"--config.batch_size={rows}", f"--config.eval.batch_size={rows}",
          "--config.total_steps=100", "--config.eval.every_steps=100",
          "--config.stop_at_step=1", "--config.log_every_steps=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("variants")
  return {"root": root, "workdirs": {}}


@pytest.mark.slow
@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}:{v}" for n, v in VARIANTS])
def test_every_variant_trains_its_first_step(name, variant, runs):
  config = _config(name, variant)
  root = runs["root"]
  workdir = root / f"{name}_{variant or 'paper'}".replace(",", "_")
  extra = []
  if "tta" in variant.split(","):  # adapts a pretrained run: the ARC variant's own
    base = variant.replace("tta", "").strip(",")
    source = runs["workdirs"].get(("arc.py", base))
    assert source is not None, "the test of the pretrained variant runs first"
    extra.append(f"--config.init_from={source}")
  proc = env_util.run_module(
      "hrm_jax.main", f"--config=experiments/{name}" + (f":{variant}" if variant else ""),
      f"--workdir={workdir}", f"--config.data.data_dir={root / 'data'}",
      *_shrink(config), *extra, timeout=1200)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 0, log[-4000:]
  runs["workdirs"][(name, variant)] = workdir
  assert "Traceback" not in log, log[-4000:]
  assert (workdir / "checkpoints" / "1").is_dir(), log[-3000:]
  assert "Stopping at step 1 (config.stop_at_step)" in log, log[-3000:]
  family_line = re.search(r"(HRM|TRM|TRANSFORMER): ([\d,]+) parameters", log)
  assert family_line and family_line.group(1) == config.model.arch.upper(), log[-3000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"] == json.loads(config.model.to_json())  # the variant's own model
  assert saved["grad_accum_steps"] == config.grad_accum_steps
  # A paper-scale config on a CPU says so after its first step, naming the CPU variant.
  said = "This is a paper-scale config on a CPU" in log
  assert said == bool(config.cpu_variant), log[-3000:]
  if said:
    assert f"--config={config.cpu_variant}" in log


def test_a_tfds_error_at_setup_is_one_line_naming_the_dataset_and_directory(tmp_path,
                                                                           monkeypatch):
  from hrm_jax import errors  # pylint: disable=import-outside-toplevel
  from hrm_jax.data import loader  # pylint: disable=import-outside-toplevel
  cfg = data_config.default_config("maze")
  cfg.data_dir = str(tmp_path)

  def refused(data_cfg):
    del data_cfg
    raise ValueError("Cannot name a custom BuilderConfig the same as an available "
                     "BuilderConfig. Change the name.\nRequested: ...")

  monkeypatch.setattr(builders, "builder_for", refused)
  with pytest.raises(Exception) as e:
    loader.load(cfg, "train")
  failure = errors.explain(e.value)
  assert failure is not None and failure.exit_code == errors.RUNTIME
  assert len(failure.message.splitlines()) == 1
  for words in ("hrm_maze", str(tmp_path), "Cannot name a custom BuilderConfig",
                "config.data.data_dir"):
    assert words in failure.message, failure.message
