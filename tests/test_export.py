"""--mode=export: the serialised StableHLO reloads and gives the live model's output for two batch sizes; the ONNX
route (jax2onnx, optional) gives BiSeNet's in onnxruntime."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtda_jax import app, errors, export
from tests.test_predict import make_run
from tests.trainer_utils import TinySeg, restore_params, tiny_config

SIZE = (32, 48)
ULP1 = 2.0 ** -24  # float32 rounding unit at 1.0, the scale of probabilities


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  return make_run(str(tmp_path_factory.mktemp('export_run')))


def export_config(config, **overrides):
  cfg = tiny_config(config.data.root)
  cfg.export.input_size = SIZE
  for key, value in overrides.items():
    cfg.export[key] = value
  return cfg


def saved_variables(workdir: str) -> dict:
  seg = restore_params(workdir)['seg']
  return {'params': seg['params'], 'batch_stats': seg['batch_stats']}


def images(batch: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(0, 255, (batch, *SIZE, 3)).astype(np.float32)


def probability_tolerance(module, variables, x: np.ndarray, live: np.ndarray) -> float:
  """The tolerance for another float32 implementation of `module`'s softmax on `x`: 8 x the rounding error of our
  own float32 forward pass (`live`, measured against the same network evaluated in float64), plus 8 ulp of 1.0
  (the rounding of exp, sum and division in the softmax itself). Two float32 evaluations of one network that sum in
  different orders (XLA's constant folding, onnxruntime's blocked kernels) err by the same order; a conversion error
  (a padding, a BatchNorm, an upsampling wrong) is orders of magnitude above."""
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), variables)
    forward = jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, x, train=False)['logits'].astype(jnp.float64),
                                                  axis=-1))
    p64 = np.asarray(forward(v64, jnp.asarray(x, jnp.float64)))
  return 8.0 * float(np.abs(live - p64).max()) + 8 * ULP1, p64


def test_stablehlo_round_trip_matches_the_live_model_for_two_batch_sizes(run):
  workdir, config = run
  meta = app.run(export_config(config), workdir=workdir, mode='export')
  out = os.path.join(workdir, 'export')
  assert sorted(os.listdir(out)) == ['model.json', 'model.stablehlo']
  with open(os.path.join(out, 'model.json')) as f:
    assert json.load(f) == meta
  assert meta['input']['shape'] == ['batch', *SIZE, 3] and meta['input']['dtype'] == 'float32'
  assert meta['output']['shape'] == ['batch', *SIZE, 19] and meta['platforms'] == ['cpu', 'cuda']
  assert meta['checkpoint']['kind'] == 'best' and meta['model']['name'] == 'tiny_test_seg'
  assert meta['train_id_to_label_id'][0] == 7 and meta['train_id_to_label_id'][18] == 33
  assert os.path.getsize(os.path.join(out, 'model.stablehlo')) == meta['bytes']

  reloaded = export.load(out)
  variables = saved_variables(workdir)
  module = TinySeg(19)
  live_fn = jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, x, train=False)['logits'], axis=-1))
  # The same program with the weights closed over: what the export serialised, compiled here.
  from rtda_jax import predict
  method, loaded, _, _ = predict.load_run_model(config, workdir)
  closed = jax.jit(export.forward_fn(method, loaded, SIZE, 'softmax'))
  for batch in (1, 3):  # the batch dimension is symbolic: any batch size runs
    x = images(batch, batch)
    got = np.asarray(reloaded(x))
    assert got.shape == (batch, *SIZE, 19) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.asarray(closed(jnp.asarray(x))))  # serialise + reload changes nothing
    live = np.asarray(live_fn(variables, x))  # weights as arguments: XLA folds constants differently
    tol, _ = probability_tolerance(module, variables, x, live)
    np.testing.assert_allclose(got, live, atol=tol, rtol=0)


def test_argmax_export_gives_train_ids(run):
  workdir, config = run
  meta = app.run(export_config(config, output='argmax', platforms=()), workdir=workdir, mode='export')
  assert meta['output'] == {'name': 'labels', 'shape': ['batch', *SIZE], 'dtype': 'int32',
                            'meaning': 'train ids (argmax)'} and meta['platforms'] == ['cpu']
  reloaded = export.load(os.path.join(workdir, 'export'))
  x = images(2, 7)
  labels = np.asarray(reloaded(x))
  assert labels.shape == (2, *SIZE) and labels.dtype == np.int32
  variables = saved_variables(workdir)
  logits = np.asarray(TinySeg(19).apply(variables, jnp.asarray(x), train=False)['logits'])
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-3  # far above float32 rounding (~1e-6 of logits of order 1)
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(labels[clear], np.argmax(logits, axis=-1)[clear])


def test_export_errors_name_the_field(run, monkeypatch):
  workdir, config = run
  with pytest.raises(errors.ConfigError, match='export.format'):
    app.run(export_config(config, format='tflite'), workdir=workdir, mode='export')
  with pytest.raises(errors.ConfigError, match='export.output'):
    app.run(export_config(config, output='logits'), workdir=workdir, mode='export')
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)  # as if not installed
  with pytest.raises(errors.UserError, match='jax2onnx'):
    app.run(export_config(config, format='onnx'), workdir=workdir, mode='export')
  with pytest.raises(errors.MissingFileError, match='model.json'):
    export.load(os.path.join(workdir, 'nothing'))


def test_max_pool_by_slices_is_flax_max_pool():
  import flax.linen as nn
  x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 9, 12, 5)).astype(np.float32))
  for pads in (((1, 1), (1, 1)), ((1, 2), (1, 0)), 'VALID'):
    want = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)
    np.testing.assert_array_equal(export.max_pool_by_slices(x, (3, 3), (2, 2), pads), want)  # max is exact


@pytest.mark.slow
def test_onnx_bisenet_matches_the_live_model_in_onnxruntime(tmp_path):
  pytest.importorskip('jax2onnx')  # optional packages (export.ONNX_INSTALL): the test needs them
  pytest.importorskip('onnxruntime')
  from rtda_jax import benchmark, methods, models
  config = tiny_config(str(tmp_path))  # BiSeNet
  method = methods.get_method(config)
  size = (64, 64)
  variables = benchmark.random_tree(models.init_shapes(method.model, (1, *size, 3), train=False))
  path = str(tmp_path / 'model.onnx')
  with open(path, 'wb') as f:
    f.write(export.export_onnx(export.forward_fn(method, variables, size, 'softmax'), size, 'softmax')
            .SerializeToString())
  session = export.load_onnx(path)
  x = np.random.default_rng(1).uniform(0, 255, (2, *size, 3)).astype(np.float32)
  live = np.asarray(jax.jit(lambda v, x: jax.nn.softmax(method.predict_logits(v, x), axis=-1))(variables, x))
  tol, p64 = probability_tolerance(models.BiSeNet(num_classes=19, dtype=jnp.float64), variables, x, live)
  top2 = np.sort(p64, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 2 * tol
  assert clear.mean() > 0.9
  for batch in (2, 1):  # the batch is symbolic: a batch of 1 is its first image (eval mode: images independent)
    got = session(x[:batch])
    assert got.shape == (batch, *size, 19)
    np.testing.assert_allclose(got, p64[:batch], atol=tol, rtol=0)  # as close to exact as our own float32 (x8)
    np.testing.assert_array_equal(got.argmax(-1)[clear[:batch]], p64[:batch].argmax(-1)[clear[:batch]])


def test_onnx_mode_writes_a_model_onnxruntime_runs(run):
  pytest.importorskip('jax2onnx')
  pytest.importorskip('onnxruntime')
  workdir, config = run
  meta = app.run(export_config(config, format='onnx'), workdir=workdir, mode='export')
  out = os.path.join(workdir, 'export')
  assert meta['file'] == 'model.onnx' and os.path.getsize(os.path.join(out, 'model.onnx')) == meta['bytes']
  reloaded = export.load(out)
  variables = saved_variables(workdir)
  module = TinySeg(19)
  for batch in (1, 3):
    x = images(batch, 10 + batch)
    live = np.asarray(jax.nn.softmax(module.apply(variables, jnp.asarray(x), train=False)['logits'], axis=-1))
    tol, _ = probability_tolerance(module, variables, x, live)
    np.testing.assert_allclose(reloaded(x), live, atol=tol, rtol=0)
