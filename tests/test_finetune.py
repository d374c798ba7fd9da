"""Fine-tuning on new puzzles: `config.init_from` + `config.opt.freeze_weights`
change only what they are told to, and ARC's test-time split (`data.test_time`)."""
import jax
import numpy as np
import pytest

from experiments import arc as arc_exp
from experiments import sudoku as sudoku_exp
from hrm_jax import data, metric_writers, optim, train, workdir as workdir_lib
from hrm_jax.data import arc as arc_data
from hrm_jax.data import arc_tasks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
  """A 4-step Sudoku smoke run: the workdir fine-tuning starts from."""
  workdir = tmp_path_factory.mktemp("pretrained")
  config = sudoku_exp.get_config("smoke")
  config.data.data_dir = str(data_dir)
  train.train_and_evaluate(config, str(workdir))
  return str(workdir), jax.device_get(workdir_lib.load_weights(workdir).weights)


def _finetune(pretrained, data_dir, workdir, freeze):
  config = sudoku_exp.get_config("smoke")
  config.data.data_dir = str(data_dir)
  config.init_from = pretrained[0]
  config.opt.freeze_weights = freeze
  config.total_steps = 3
  config.eval.every_steps = 3
  config.opt.puzzle_emb_lr = 1e-2  # so that one SignSGD step is plainly visible
  result = train.train_and_evaluate(config, str(workdir))
  return jax.device_get(result.state), metric_writers.read_jsonl_metrics(workdir)


def test_frozen_weights_stay_bit_for_bit_and_puzzle_rows_train(pretrained, data_dir,
                                                               tmp_path):
  before = pretrained[1]
  state, records = _finetune(pretrained, data_dir, tmp_path, freeze=True)
  assert int(state.step) == 3
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(before.buffers), jax.tree.leaves(state.buffers)):
    np.testing.assert_array_equal(a, b)
  assert np.abs(state.puzzle_emb - before.puzzle_emb).max() > 1e-3  # the blank row trained
  logged = [r for r in records if "train/lr" in r]
  assert logged and all(r["train/lr"] == 0.0 and r["train/update_norm"] == 0.0
                        for r in logged)


def test_without_freezing_both_change(pretrained, data_dir, tmp_path):
  before = pretrained[1]
  state, _ = _finetune(pretrained, data_dir, tmp_path, freeze=False)
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params))]
  assert all(changed), changed
  assert np.abs(state.puzzle_emb - before.puzzle_emb).max() > 1e-3


def test_freeze_weights_zeroes_every_dense_update():
  config = sudoku_exp.get_config("smoke").opt
  config.freeze_weights = True
  opt = optim.build_optimizers(config, total_steps=10)
  params = {"w": np.ones((2, 3), np.float32)}
  updates, _ = opt.dense_tx.update({"w": np.full((2, 3), 5.0, np.float32)},
                                   opt.dense_tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], 0.0)
  assert float(opt.dense_lr(3)) == 0.0 and float(opt.puzzle_emb_lr(3)) > 0


def test_arc_test_time_split_keeps_only_the_evaluation_tasks():
  cfg = data.default_config("arc")
  cfg.update(max_tasks_per_subset=2, num_aug=2)
  full = arc_data.plan(cfg, progress=lambda m: None)
  cfg.test_time = True
  tta = arc_data.plan(cfg, progress=lambda m: None)
  tasks = {t.task_id: t for t in arc_tasks.load_tasks(cfg.source, 2)}
  evaluation = sorted(k for k, t in tasks.items() if t.subset == arc_tasks.EVALUATION)
  assert len(evaluation) == 2 and len(tasks) == 4
  names = {arc_data.parse_name(n)[0] for n in tta.identifiers[1:]}
  assert names == set(evaluation)  # fresh ids: the evaluation tasks' variants alone
  assert len(tta.identifiers) < len(full.identifiers)
  assert arc_data.shape(cfg).num_puzzle_identifiers >= len(tta.identifiers)
  for split, part in (("train", "train"), ("test", "test")):
    groups = list(tta.make_groups(split))
    assert len(groups) == 2
    for task_id, group in zip(evaluation, groups):
      want = len(getattr(tasks[task_id], part))  # train: demos; test: test inputs
      assert group.puzzle_sizes.tolist() == [want] * len(group.puzzle_identifiers)


def test_arc_test_time_needs_an_evaluation_subset(tmp_path):
  root = tmp_path / "arc"
  (root / "training").mkdir(parents=True)
  (root / "training" / "a.json").write_text(
      '{"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]], '
      '"output": [[2]]}]}')
  cfg = data.default_config("arc")
  cfg.update(source=f"dirs:{root}", test_time=True, num_aug=1)
  with pytest.raises(data.DataError, match=r"keeps the tasks of the 'evaluation' subset"):
    arc_data.plan(cfg, progress=lambda m: None)


def test_arc_tta_starts_new_puzzle_ids_at_the_mean_of_the_pretrained_table(data_dir,
                                                                          tmp_path):
  base = arc_exp.get_config("smoke")
  base.data.data_dir = str(data_dir)
  base.total_steps = 2
  base.eval.every_steps = 2
  train.train_and_evaluate(base, str(tmp_path / "base"))
  saved = jax.device_get(workdir_lib.load_weights(tmp_path / "base").weights)

  config = arc_exp.get_config("tta,smoke")
  assert config.data.test_time and config.eval.every_steps == config.total_steps
  config.data.data_dir = str(data_dir)
  config.init_from = str(tmp_path / "base")
  config.total_steps = 2
  config.eval.every_steps = 2
  config.opt.puzzle_emb_lr = 0.0  # keep the initial rows to look at them
  result = train.train_and_evaluate(config, str(tmp_path / "tta"))
  table = np.asarray(jax.device_get(result.state.puzzle_emb))
  assert table.shape[0] < saved.puzzle_emb.shape[0]
  np.testing.assert_allclose(table, np.broadcast_to(saved.puzzle_emb.mean(0), table.shape),
                             rtol=1e-6, atol=1e-7)
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(saved.params), jax.tree.leaves(jax.device_get(
                 result.state.params)))]
  assert any(changed)  # full fine-tuning by default, as the paper
  assert "arc/pass@2" in result.eval_metrics
  # Only the evaluation tasks' test inputs were predicted.
  test = data.load(config.data, "test")
  assert {arc_data.parse_name(n)[0] for n in test.identifiers[1:]} == {
      t.task_id for t in arc_tasks.load_tasks(config.data.source, 2)
      if t.subset == arc_tasks.EVALUATION}
