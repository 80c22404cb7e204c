"""The generic trainer end to end on tiny data: files it writes, exact reproducibility, exact resume, NaN guard,
data parallelism, and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from rtda_jax import app, checkpointing, parallel
from tests import xla_flags
from tests.trainer_utils import (TINY, TINY_MODEL, U32, assert_same_up_to_summation_order, assert_trees_equal,
                                 initial_state, random_batch, read_eval, restore_params, steps_on_mesh, tiny_config)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_root: str, **overrides):
  """tiny_config with the tiny test net: the trainer's files, reproducibility, resume and NaN guard do not depend on
  the network (the 1-vs-8-device step and the command line below run BiSeNet)."""
  return tiny_config(data_root, **{'model.name': TINY_MODEL, **overrides})


@pytest.fixture(scope='module')
def straight_run(data_root, tmp_path_factory):
  """6 steps without stopping."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  result = app.run(_config(data_root), workdir=workdir)
  return workdir, result


def test_run_writes_the_workdir_contract(straight_run):
  workdir, result = straight_run
  for name in ('config.json', 'metrics.jsonl', 'eval.json', 'tensorboard', 'predictions', 'checkpoints'):
    assert os.path.exists(os.path.join(workdir, name)), name
  ev = read_eval(workdir)
  assert ev == json.loads(json.dumps(result))
  assert {'dataset', 'split', 'step', 'num_images', 'miou', 'per_class_iou', 'pixel_accuracy',
          'mean_class_accuracy', 'fwiou', 'protocol'} <= set(ev)
  assert ev['dataset'] == 'cityscapes' and ev['split'] == 'val' and ev['step'] == 6 and ev['num_images'] == 8
  assert 0.0 <= ev['miou'] <= 100.0 and len(ev['per_class_iou']) == 19
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  train_lines = [l for l in lines if 'loss' in l]
  assert [l['step'] for l in train_lines] == [2, 4, 6]
  assert all(np.isfinite(l['loss']) and l['images_per_sec'] > 0 and l['lr'] > 0 for l in train_lines)
  assert len(os.listdir(os.path.join(workdir, 'predictions'))) == 2
  assert os.listdir(os.path.join(workdir, 'tensorboard'))


def test_same_seed_gives_bit_identical_parameters_and_eval(straight_run, data_root, tmp_path):
  workdir, _ = straight_run
  again = str(tmp_path / 'again')
  app.run(_config(data_root), workdir=again)
  assert_trees_equal(restore_params(workdir), restore_params(again))
  assert read_eval(workdir) == read_eval(again)


def test_other_seed_gives_other_parameters(straight_run, data_root, tmp_path):
  other = str(tmp_path / 'other')
  app.run(_config(data_root, seed=1), workdir=other)
  a = restore_params(straight_run[0])['seg']['params']
  b = restore_params(other)['seg']['params']
  assert not np.array_equal(a['conv']['kernel'], b['conv']['kernel'])


def test_stop_and_resume_equals_never_stopping(straight_run, data_root, tmp_path):
  workdir = str(tmp_path / 'resumed')
  app.run(_config(data_root, **{'train.stop_after_steps': 3}), workdir=workdir)
  assert not os.path.exists(os.path.join(workdir, 'eval.json'))
  assert restore_params(workdir)['seg']['step'] == 3
  app.run(_config(data_root), workdir=workdir)
  assert_trees_equal(restore_params(straight_run[0]), restore_params(workdir))
  assert read_eval(straight_run[0]) == read_eval(workdir)
  steps = [json.loads(l)['step'] for l in open(os.path.join(workdir, 'metrics.jsonl')) if 'loss' in l]
  assert steps == [2, 4, 6]  # nothing logged twice across the restart


def test_evaluate_mode_reproduces_the_final_eval(straight_run, data_root):
  workdir, _ = straight_run
  saved = read_eval(workdir)
  result = app.run(_config(data_root), workdir=workdir, mode='evaluate')
  assert result['miou'] == saved['miou'] and result['step'] == saved['step']


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
  workdir = str(tmp_path / 'nan')
  app.run(_config(data_root, **{'train.stop_after_steps': 2}), workdir=workdir)
  with pytest.raises(FloatingPointError, match=r'step [34]\b.*last good checkpoint \(step 2\)'):
    app.run(_config(data_root, **{'train.learning_rate': 1e30}), workdir=workdir)
  assert restore_params(workdir)['seg']['step'] == 2


def test_sigterm_sets_the_stop_flag_and_restores_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with checkpointing.StopRequest() as stop:
    assert not stop
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop and stop.signum == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == before


def test_batch_not_divisible_by_devices_is_a_clear_error():
  mesh = parallel.make_mesh(8)
  with pytest.raises(ValueError, match='train.batch_size=6 is not divisible by the 8 devices'):
    parallel.check_batch_size(6, mesh)


def test_the_summation_order_bound_rejects_data_parallel_bugs():
  """The bound of the 1-vs-8 device tests passes rounding-sized differences and fails what data-parallel bugs do:
  one device's slice of the batch left out (7/8 of the update) and gradients summed over 8 devices (8x)."""
  rng = np.random.default_rng(0)
  initial = {'kernel': rng.normal(size=(3, 3, 4, 8)), 'bias': np.zeros(8)}
  update = {'kernel': 1e-2 * rng.normal(size=(3, 3, 4, 8)), 'bias': 1e-3 * rng.normal(size=8)}
  a = jax.tree.map(lambda x, d: x + d, initial, update)
  n = 2 ** 15
  rounding = jax.tree.map(lambda x, d: x + d * (1 + n * U32 * rng.uniform(-1, 1, d.shape)), initial, update)
  assert_same_up_to_summation_order(a, rounding, initial, n)
  for factor in (7 / 8, 8.0):
    bug = jax.tree.map(lambda x, d: x + factor * d, initial, update)
    with pytest.raises(AssertionError, match=r'\|\|a - b\|\|'):
      assert_same_up_to_summation_order(a, bug, initial, n)


def test_one_and_eight_devices_give_the_same_step(data_root):
  """Two steps on one device and on eight agree to what float32 sums in other orders can differ by.

  One device and eight add the same terms in other orders (each device sums its slice, then an all-reduce; and XLA
  picks other kernels for a batch of 8 and of 1, which differ by CPU: AVX2 and AVX-512 disagree). A float32 sum of n
  terms, in any order, is within n u sum|terms| of the exact sum (u = 2^-24; typically sqrt(n) u). The longest sums
  of this step run over the B*H*W = 8*64*64 = 2^15 pixels: the cross-entropy mean has positive terms, so the loss is
  within n u = 2^-9 relative. The parameters: trainer_utils.assert_same_up_to_summation_order (each leaf's update in
  the 2-norm, within depth * n u of itself). Measured: 1e-7 relative on the loss (AVX-512), 5.3e-5 on an AVX2
  machine; the parameters within 1.6 n u of their updates on a Xeon (AVX-512), the bound being 24 n u. A
  data-parallel bug (an update missed, a gradient summed instead of averaged over the devices: 8x the update)
  moves whole leaves by 12.5% to 700% of their update.
  """
  assert len(jax.devices()) >= 8, 'conftest sets 8 fake CPU devices'
  config = tiny_config(data_root, **{'train.batch_size': 8})
  batch = random_batch(8, TINY, domains=('source',))
  (state1, metrics1), (state8, metrics8) = (steps_on_mesh(config, n, batch, TINY) for n in (1, 8))
  n = 8 * TINY[0] * TINY[1]  # pixels of the batch: the longest float32 sums of the step
  np.testing.assert_allclose(metrics1['loss'], metrics8['loss'], rtol=n * U32, atol=0)
  assert_same_up_to_summation_order(state1.seg.params, state8.seg.params, initial_state(config, TINY).seg.params, n)


def test_command_line_end_to_end(data_root, tmp_path):
  workdir = str(tmp_path / 'cli')
  args = [f'--config.data.root={data_root}', '--config.data.synthetic.num_gta5=16',
          '--config.data.synthetic.num_cityscapes_train=16', '--config.data.synthetic.num_cityscapes_val=8',
          *[f'--config.data.{f}=(64,64)' for f in ('synthetic.gta5_size', 'synthetic.cityscapes_size', 'gta5_size',
                                                  'cityscapes_size', 'source_train_size', 'target_train_size')],
          '--config.data.num_workers=0', '--config.train.batch_size=2', '--config.train.num_steps=2',
          '--config.num_devices=1']
  env = {**os.environ, 'XLA_FLAGS': xla_flags.subprocess_flags(), 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/oracle.py', f'--workdir={workdir}', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'mIoU' in proc.stdout + proc.stderr
  ev = read_eval(workdir)
  assert ev['step'] == 2 and ev['dataset'] == 'cityscapes'
  bad = subprocess.run([sys.executable, 'main.py', '--config=configs/oracle.py', '--config.train.no_such_key=1'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and 'no_such_key' in bad.stderr
