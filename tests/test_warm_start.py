"""Warm start (`model.init_from`), the automatic source-only stage, and AdaBN (protocol v2 of the results table)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtda_jax import app, checkpointing, methods, trainer
from rtda_jax.methods import adabn
from tests import xla_flags
from tests.trainer_utils import (TINY, TINY_MODEL, assert_trees_equal, random_batch, read_eval, restore_params,
                                 tiny_config)


def _config(data_root: str, name: str = 'source_only', **overrides):
  """tiny_config with the tiny test net (warm start, stages and AdaBN do not depend on the network; the models'
  own tests cover BiSeNet and DeepLab-v2)."""
  return tiny_config(data_root, name, **{'model.name': TINY_MODEL, **overrides})


@pytest.fixture(scope='module')
def two_stage(data_root, tmp_path_factory):
  """adv from a source-only stage that the adv run trains itself (init_steps), 4 steps straight."""
  base = tmp_path_factory.mktemp('two_stage')
  stage, workdir = str(base / 'source'), str(base / 'adv')
  config = _config(data_root, 'adv', **{'model.init_from': stage, 'model.init_steps': 3,
                                            'train.num_steps': 4})
  result = app.run(config, workdir=workdir)
  return stage, workdir, result


def test_parse_init_from():
  assert checkpointing.parse_init_from('runs/a') == ('runs/a', 'last', None)
  assert checkpointing.parse_init_from('runs/a:best') == ('runs/a', 'best', None)
  assert checkpointing.parse_init_from('runs/a:last') == ('runs/a', 'last', None)
  assert checkpointing.parse_init_from('runs/a:250') == ('runs/a', 'last', 250)
  assert checkpointing.parse_init_from('C:/x:y') == ('C:/x:y', 'last', None)  # not a step or kind: part of the path


def test_missing_stage_is_trained_first_as_source_only(two_stage):
  stage, workdir, _ = two_stage
  with open(os.path.join(stage, 'config.json')) as f:
    saved = json.load(f)
  assert saved['method'] == 'supervised' and saved['train']['num_steps'] == 3 and saved['model']['init_from'] is None
  assert restore_params(stage)['seg']['step'] == 3


def test_warm_start_evaluates_the_starting_model_first(two_stage):
  stage, workdir, result = two_stage
  init = json.load(open(os.path.join(workdir, 'eval_init.json')))
  # The adapted run's step-0 evaluation is the stage's final model on the same split: the same confusion matrix.
  assert init['miou'] == read_eval(stage)['miou'] and init['init_from'] == stage and init['step'] == 0
  assert result['step'] == 4


def test_warm_start_copies_the_segmentation_variables_only(two_stage, data_root):
  stage, _, _ = two_stage
  config = _config(data_root, 'adv', **{'model.init_from': stage})
  method = methods.get_method(config)
  fresh = method.init(jax.random.PRNGKey(0), {'source': TINY, 'target': TINY})
  warm = jax.device_get(trainer._warm_start(method, fresh, stage))  # pylint: disable=protected-access
  saved = restore_params(stage)['seg']
  assert_trees_equal(warm.seg.params, saved['params'])
  assert_trees_equal(warm.seg.batch_stats, saved['batch_stats'])
  assert int(warm.seg.step) == 0  # a warm start is not a resume: step and optimiser start afresh
  assert_trees_equal(warm.seg.opt_state, jax.device_get(fresh.seg.opt_state))
  assert_trees_equal(warm.discs, jax.device_get(fresh.discs))  # the discriminator is not the source run's


def test_dacs_teacher_starts_from_the_warm_start(two_stage, data_root):
  stage, _, _ = two_stage
  method = methods.get_method(_config(data_root, 'dacs'))
  state = method.init(jax.random.PRNGKey(0), {'source': TINY, 'target': TINY})
  warm = jax.device_get(trainer._warm_start(method, state, stage))  # pylint: disable=protected-access
  assert_trees_equal(warm.teacher['params'], restore_params(stage)['seg']['params'])


def test_warm_started_run_resumes_bit_for_bit(two_stage, data_root, tmp_path):
  stage, workdir, _ = two_stage
  resumed = str(tmp_path / 'resumed')
  overrides = {'model.init_from': stage, 'model.init_steps': 3, 'train.num_steps': 4}
  app.run(_config(data_root, 'adv', **overrides, **{'train.stop_after_steps': 2}), workdir=resumed)
  app.run(_config(data_root, 'adv', **overrides), workdir=resumed)
  assert_trees_equal(restore_params(workdir), restore_params(resumed))
  assert read_eval(workdir) == read_eval(resumed)


def test_missing_checkpoint_is_an_error_naming_it(data_root, tmp_path):
  config = _config(data_root, 'adv', **{'model.init_from': str(tmp_path / 'nowhere')})
  with pytest.raises(FileNotFoundError, match='nowhere.*no checkpoint'):
    app.run(config, workdir=str(tmp_path / 'w'))
  os.makedirs(tmp_path / 'one' / 'checkpoints' / 'last' / '1')
  with pytest.raises(FileNotFoundError, match=r'no checkpoint of step 7 .* it has \[1\]'):
    checkpointing.load_segmentation_variables(str(tmp_path / 'one') + ':7')


def test_a_checkpoint_saved_over_other_devices_warm_starts_here(tmp_path):
  """A run saved by several processes or GPUs names devices a later process may not have; warm start reads its
  arrays as host arrays all the same (here: sharded over this session's 8 devices, read by a 1-device process)."""
  import subprocess
  import sys

  import orbax.checkpoint as ocp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  mesh = Mesh(np.array(jax.devices()), ('data',))
  w = jax.device_put(jnp.arange(16.0), NamedSharding(mesh, PartitionSpec('data')))
  mean = jax.device_put(jnp.full((3,), 0.5), NamedSharding(mesh, PartitionSpec()))
  path = tmp_path / 'run' / 'checkpoints' / 'last' / '7' / 'state'
  with ocp.PyTreeCheckpointer() as ckpt:
    ckpt.save(str(path), {'seg': {'params': {'w': w}, 'batch_stats': {'mean': mean}}, 'step': 7})
  code = ('import numpy as np, jax; from rtda_jax import checkpointing\n'
          f'v, info = checkpointing.load_segmentation_variables({str(tmp_path / "run")!r})\n'
          'assert jax.device_count() == 1 and info["step"] == 7, (jax.device_count(), info)\n'
          'np.testing.assert_array_equal(v["params"]["w"], np.arange(16.0))\n'
          'np.testing.assert_array_equal(v["batch_stats"]["mean"], np.full((3,), 0.5))\n')
  env = dict(os.environ, XLA_FLAGS=xla_flags.subprocess_flags(), JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, '-c', code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]


def test_mismatched_checkpoint_is_an_error_naming_it(two_stage, data_root):
  stage, _, _ = two_stage
  config = _config(data_root, 'adv', **{'model.init_from': stage, 'model.num_classes': 5})
  method = methods.get_method(config)
  state = method.init(jax.random.PRNGKey(0), {'source': TINY, 'target': TINY})
  with pytest.raises(ValueError, match=r'init_from=.*does not match this model.*shapes differ'):
    trainer._warm_start(method, state, stage)  # pylint: disable=protected-access


def test_paper_preset_without_weights_names_the_file_it_expects():
  from configs import adv
  config = adv.get_config('deeplabv2,paper')
  with pytest.raises(ValueError, match='DeepLab_resnet_pretrained_init-f81d91e8.pth'):
    trainer.check_initialisation(config)
  config.model.allow_random_init = True
  trainer.check_initialisation(config)
  from configs import dacs
  with pytest.raises(ValueError, match='resnet101COCO-41f33a49.pth'):
    trainer.check_initialisation(dacs.get_config('deeplabv2,paper'))
  with pytest.raises(ValueError, match='resnet18-f37072fd.pth'):
    trainer.check_initialisation(adv.get_config('course'))


# ---- AdaBN ------------------------------------------------------------------------------------------------------


def _numpy_conv3x3_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """[B, H, W, Ci] * [3, 3, Ci, Co] with zero 'SAME' padding, in float64: an independent re-statement of nn.Conv."""
  b, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((b, h, w, kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
  return out + bias


def test_adabn_statistics_equal_a_numpy_reestimate(data_root):
  config = _config(data_root, 'adabn', **{'model.init_from': 'unused-here', 'model.name': TINY_MODEL})
  method = methods.get_method(config)
  state = method.init(jax.random.PRNGKey(0), {'source': TINY, 'target': TINY})
  batches = [random_batch(4, TINY, seed=s, domains=('target',)) for s in range(3)]
  step = jax.jit(method.train_step)
  for batch in batches:
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics['bn_mean_shift'])) and int(state.step) == 3
  params = jax.device_get(state.seg.params)
  images = np.concatenate([b['target']['image'] for b in batches]).astype(np.float64) / 255.0
  conv = _numpy_conv3x3_same(images, np.asarray(params['conv']['kernel'], np.float64),
                             np.asarray(params['conv']['bias'], np.float64))  # the BatchNorm's input
  expected_mean = conv.mean(axis=(0, 1, 2))
  expected_var = conv.var(axis=(0, 1, 2))  # population variance over every target pixel seen
  got = jax.device_get(method.eval_variables(state)['batch_stats']['bn'])
  # float32 forward and sums over 3 x 4 x 64 x 64 values of magnitude ~1: relative errors ~1e-6; 1e-4 leaves room
  # for any CPU's summation order, and is far below the difference between batch and population statistics.
  np.testing.assert_allclose(got['mean'], expected_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got['var'], expected_var, rtol=1e-4, atol=1e-5)
  assert_trees_equal(jax.device_get(method.eval_variables(state)['params']), params)  # parameters never change


def test_adabn_before_any_batch_is_the_source_model(data_root):
  method = methods.get_method(_config(data_root, 'adabn', **{'model.init_from': 'x', 'model.name': TINY_MODEL}))
  state = method.init(jax.random.PRNGKey(0), {'source': TINY, 'target': TINY})
  assert_trees_equal(jax.device_get(method.eval_variables(state)['batch_stats']), jax.device_get(state.source_stats))


def test_adabn_needs_a_trained_model(data_root):
  with pytest.raises(ValueError, match='init_from'):
    methods.get_method(_config(data_root, 'adabn'))


def test_adabn_through_the_trainer_changes_only_the_statistics(two_stage, data_root, tmp_path):
  stage, _, _ = two_stage
  workdir = str(tmp_path / 'adabn')
  result = app.run(_config(data_root, 'adabn', **{'model.init_from': stage, 'train.num_steps': 3}),
                   workdir=workdir)
  assert result['step'] == 3
  saved, source = restore_params(workdir)['seg'], restore_params(stage)['seg']
  assert_trees_equal(saved['params'], source['params'])
  # The saved network carries the target statistics, so a later init_from of this run starts from the adapted model.
  variables, _ = checkpointing.load_segmentation_variables(workdir)
  leaves = jax.tree.leaves(variables['batch_stats'])
  assert any(not np.array_equal(a, b) for a, b in zip(leaves, jax.tree.leaves(source['batch_stats'])))
  init = json.load(open(os.path.join(workdir, 'eval_init.json')))
  assert init['miou'] == read_eval(stage)['miou']
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl')) if 'bn_mean_shift' in l]
  assert lines and all(np.isfinite(l['bn_mean_shift']) for l in lines)


def test_population_statistics_formula():
  sums = {'a': {'mean': jnp.array([2.0, 4.0]), 'var': jnp.array([10.0, 20.0])}}
  stats = adabn.population_statistics(sums, jnp.float32(2.0))
  np.testing.assert_allclose(stats['a']['mean'], [1.0, 2.0])
  np.testing.assert_allclose(stats['a']['var'], [5.0 - 1.0, 10.0 - 4.0])


def test_a_half_trained_stage_is_finished_before_stage_two(data_root, tmp_path):
  stage, workdir = str(tmp_path / 'stage'), str(tmp_path / 'adv')
  app.run(_config(data_root, **{'train.num_steps': 3, 'train.stop_after_steps': 1}), workdir=stage)
  assert restore_params(stage)['seg']['step'] == 1
  # The adaptation run's own job-slot limit (stop_after_steps) does not cut its first stage short.
  app.run(_config(data_root, 'adv', **{'model.init_from': stage, 'model.init_steps': 3, 'train.num_steps': 2,
                                           'train.stop_after_steps': 1}), workdir=workdir)
  assert restore_params(stage)['seg']['step'] == 3
  assert restore_params(workdir)['seg']['step'] == 1


def test_a_stage_trained_on_another_source_is_refused(two_stage, data_root, tmp_path):
  """`--config.data.source=synthia` with the GTA5 demo's stage as init_from: an error naming both sources."""
  from rtda_jax import errors
  stage, _, _ = two_stage
  config = _config(data_root, 'adv', **{'model.init_from': stage, 'model.init_steps': 3,
                                            'data.source': 'synthia'})
  with pytest.raises(errors.ConfigError, match="source-only run on 'gta5'.*adapts from 'synthia'"):
    app.run(config, workdir=str(tmp_path / 'w'))
