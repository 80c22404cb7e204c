"""What the logs say: training scalars are means over the logging interval (clu.metrics), the same across a resume;
the clu.parameter_overview of every network of a method, printed when training starts and in complexity.json."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rtda_jax import app, benchmark, methods, trainer
from rtda_jax.methods import base
from tests.trainer_utils import TINY_MODEL, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
U32 = 2.0 ** -24  # unit roundoff of float32 (round to nearest)


def cfg(data_root: str, config_name: str = 'source_only', **overrides):
  return tiny_config(data_root, config_name, **{'model.name': TINY_MODEL, **overrides})


def train_lines(workdir: str) -> list[dict]:
  """metrics.jsonl's training lines (those with a loss), without the timing (it differs from run to run)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return [{k: v for k, v in l.items() if k != 'images_per_sec'} for l in lines if 'loss' in l]


@pytest.fixture(scope='module')
def runs(data_root, tmp_path_factory):
  """The same 6 tiny steps logged every step (each step's own values) and every 3 steps (stdout kept)."""
  every_step, every_3 = (str(tmp_path_factory.mktemp(n)) for n in ('every_step', 'every_3'))
  app.run(cfg(data_root, **{'train.log_every_steps': 1}), workdir=every_step)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    app.run(cfg(data_root, **{'train.log_every_steps': 3}), workdir=every_3)
  return every_step, every_3, out.getvalue()


# ---- training scalars: the mean over the interval -------------------------------------------------------------------

def test_logged_scalars_are_the_means_of_the_steps_since_the_last_log(runs):
  per_step, logged = train_lines(runs[0]), train_lines(runs[1])
  assert [l['step'] for l in per_step] == [1, 2, 3, 4, 5, 6] and [l['step'] for l in logged] == [3, 6]
  assert set(logged[0]) == set(per_step[0]) and {'loss', 'lr'} < set(logged[0])
  for line in logged:
    interval = [l for l in per_step if line['step'] - 3 < l['step'] <= line['step']]
    for name, value in line.items():
      if name == 'step':
        continue
      if name == 'lr':  # a learning rate is the schedule's value at the logged step, not a mean
        assert value == interval[-1]['lr']
        continue
      steps = np.array([l[name] for l in interval], np.float64)
      # The logged mean is float32: 3 additions and one division, each rounding by at most U32 relative; the
      # values are losses/accuracies >= 0, so the error is at most 4 U32 of the exact mean (plus 1e-30 for zeros).
      np.testing.assert_allclose(value, steps.mean(), rtol=4 * U32, atol=1e-30, err_msg=f'{name} {line["step"]}')
  # Not the value of the logged step alone (the loss changes from step to step here).
  assert logged[0]['loss'] != per_step[2]['loss']


def test_a_run_resumed_between_log_steps_logs_the_uninterrupted_values_bit_for_bit(runs, data_root, tmp_path):
  workdir = str(tmp_path / 'resumed')
  config = lambda **o: cfg(data_root, **{'train.log_every_steps': 3, **o})
  app.run(config(**{'train.stop_after_steps': 4}), workdir=workdir)  # checkpoint at step 4: mid-interval (3, 6]
  assert [l['step'] for l in train_lines(workdir)] == [3]
  app.run(config(), workdir=workdir)
  assert train_lines(workdir) == train_lines(runs[1])


def test_interval_means_average_and_last_value_against_numpy():
  cls = trainer.interval_metrics(['loss', 'acc', 'lr'])
  rng = np.random.default_rng(0)
  steps = [{n: np.float32(v) for n, v in zip(('loss', 'acc', 'lr'), rng.uniform(0, 2, 3))} for _ in range(5)]
  interval = cls.empty()
  for m in steps:
    interval = interval.merge(cls.single_from_model_output(**m))
  got = {k: float(v) for k, v in interval.compute().items()}
  for name in ('loss', 'acc'):  # 5 additions and a division: <= 6 U32 relative (values >= 0)
    np.testing.assert_allclose(got[name], np.mean([np.float64(m[name]) for m in steps]), rtol=6 * U32)
  assert got['lr'] == float(steps[-1]['lr'])


def test_an_interval_survives_the_checkpoint_meta_exactly():
  cls = trainer.interval_metrics(['loss', 'lr'])
  interval = cls.empty().merge(cls.single_from_model_output(loss=np.float32(0.1), lr=np.float32(0.01)))
  interval = interval.merge(cls.single_from_model_output(loss=np.float32(1 / 3), lr=np.float32(0.02)))
  saved = json.loads(json.dumps(trainer.interval_to_json(interval)))  # through JSON, as orbax's JsonSave writes it
  back = trainer.interval_from_json(cls, saved)
  for a, b in zip(jax.tree.leaves(interval), jax.tree.leaves(back)):
    assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)
  assert trainer.interval_from_json(cls, None) is None  # a checkpoint without it: a fresh interval
  other = trainer.interval_metrics(['loss', 'loss_adv', 'lr'])
  assert trainer.interval_from_json(other, saved) is None  # another method's metrics: a fresh interval


def test_metric_names_that_are_not_identifiers_are_a_clear_error():
  with pytest.raises(ValueError, match=r"'loss/seg'.*identifiers"):
    trainer.interval_metrics(['loss', 'loss/seg'])


# ---- clu.parameter_overview of every network --------------------------------------------------------------------

def leaf_count(tree) -> int:
  return int(sum(np.prod(np.shape(leaf), dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def abstract_state(config):
  method = methods.get_method(config)
  shapes = base.train_shapes(config)
  return jax.eval_shape(lambda key: method.init(key, shapes), jax.random.PRNGKey(0))


PLAIN_CYCLEGAN = {'translate.semantic_weight': 0.0, 'translate.semantic_target_weight': 0.0, 'translate.ngf': 4,
                  'translate.num_blocks': 1, 'translate.ndf': 4}  # no frozen net to load, small networks


@pytest.mark.parametrize('config_name, overrides, expected', [
    ('source_only', {}, lambda s: {'seg': s.seg.params}),
    ('adv', {}, lambda s: {'seg': s.seg.params, **{f'discs[{i}]': d.params for i, d in enumerate(s.discs)}}),
    ('dacs', {}, lambda s: {'seg': s.seg.params, 'teacher': s.teacher['params']}),
    ('translate', PLAIN_CYCLEGAN, lambda s: {n: getattr(s, n).params for n in ('g_st', 'g_ts', 'd_s', 'd_t', 'seg')}),
])
def test_the_overview_counts_every_network_of_the_method(config_name, overrides, expected):
  state = abstract_state(cfg('/nonexistent', config_name, **overrides))
  overview = trainer.parameter_overview(state)
  want = expected(state)
  assert list(overview) == list(want) and want
  for name, params in want.items():
    assert overview[name]['params'] == leaf_count(params) > 0, name
    table = overview[name]['table']
    assert f'Total: {leaf_count(params):,}' in table
    paths = ['/'.join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert all(p in table for p in paths), name  # one row per parameter array


def test_training_prints_the_overview_at_the_start(runs):
  printed = runs[2]
  state = abstract_state(cfg('/nonexistent'))
  assert f'seg: {leaf_count(state.seg.params):,} parameters' in printed and 'classifier/kernel' in printed


def test_complexity_json_has_the_overview_of_every_network(tmp_path):
  config = cfg(str(tmp_path / 'data'), 'adv')
  config.benchmark.resolutions, config.benchmark.dtypes, config.benchmark.batch_sizes = ((64, 64),), ('float32',), (1,)
  config.benchmark.num_runs, config.benchmark.methods = 1, ('supervised',)
  benchmark.run(config, str(tmp_path))
  with open(tmp_path / 'complexity.json') as f:
    written = json.load(f)
  overview = written['parameter_overview']
  state = abstract_state(config)
  assert overview['method'] == 'adversarial' and overview['model'] == TINY_MODEL
  want = {'seg': state.seg.params, **{f'discs[{i}]': d.params for i, d in enumerate(state.discs)}}
  assert {n: o['params'] for n, o in overview['networks'].items()} == {n: leaf_count(p) for n, p in want.items()}
  assert all(o['table'].startswith('+') for o in overview['networks'].values())
  [train] = written['entries'][0]['train']
  assert train['networks'] == {'seg': leaf_count(state.seg.params)}


# ---- which parts of clu work without TensorFlow ---------------------------------------------------------------------

def test_the_project_uses_clu_without_importing_tensorflow():
  code = ('import sys; import clu.metrics, clu.parameter_overview; import rtda_jax.trainer, rtda_jax.benchmark; '
          'print(sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'
