"""Segmentation models and discriminators: shapes, dtypes, parameter counts, BatchNorm behaviour, labels.

Parameters are filled from numpy (shapes from jax.eval_shape) instead of `model.init`, whose threefry RNG takes
XLA many seconds to compile on CPU; shape-only checks use jax.eval_shape and compile nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rtda_jax import models
from rtda_jax.models.resnet import ResNet

NUM_CLASSES = 19


def model_config(name: str, dtype: str = 'float32', multi_level: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name=name, num_classes=NUM_CLASSES, dtype=dtype, pretrained=None,
                                        multi_level=multi_level))


def fake_variables(module, input_shape, seed: int = 0, **kwargs):
  """Variables with the shapes `module.init` gives, filled from numpy (He-normal kernels, identity BN)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = np.prod(leaf.shape[:-1])
      return jnp.asarray(rng.normal(0, np.sqrt(1.0 / fan_in), leaf.shape).astype(np.float32))
    if name in ('scale', 'var'):
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(rng.normal(0, 0.1, leaf.shape).astype(np.float32))  # biases and running means

  return jax.tree_util.tree_map_with_path(fill, models.init_shapes(module, input_shape, **kwargs))


def images(shape, seed: int = 0) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32))


# ---- ResNet backbones -------------------------------------------------------------------------------------------

# torchvision's parameter counts minus the 1000-way fc (512 * 1000 + 1000 or 2048 * 1000 + 1000).
@pytest.mark.parametrize('depth, expected', [(18, 11_689_512 - 513_000), (50, 25_557_032 - 2_049_000),
                                             (101, 44_549_160 - 2_049_000)])
def test_resnet_parameter_count_matches_torchvision_without_fc(depth, expected):
  assert expected == {18: 11_176_512, 50: 23_508_032, 101: 42_500_160}[depth]
  shapes = models.init_shapes(ResNet(depth), (1, 64, 64, 3), train=False)
  assert models.count_params(shapes['params']) == expected


def test_resnet_feature_strides_at_output_stride_32_and_8():
  out = jax.eval_shape(lambda v, x: ResNet(18).apply(v, x, train=False),
                       models.init_shapes(ResNet(18), (2, 64, 128, 3), train=False), jnp.zeros((2, 64, 128, 3)))
  assert {k: v.shape for k, v in out.items()} == {'layer1': (2, 16, 32, 64), 'layer2': (2, 8, 16, 128),
                                                  'layer3': (2, 4, 8, 256), 'layer4': (2, 2, 4, 512)}
  dilated = ResNet(50, output_stride=8)
  out = jax.eval_shape(lambda v, x: dilated.apply(v, x, train=False),
                       models.init_shapes(dilated, (1, 64, 64, 3), train=False), jnp.zeros((1, 64, 64, 3)))
  assert out['layer3'].shape == (1, 8, 8, 1024) and out['layer4'].shape == (1, 8, 8, 2048)


def test_caffe_style_resnet_uses_ceil_mode_max_pool():
  """PyTorch MaxPool2d(3, 2, 1, ceil_mode=True) maps 32 -> 17 (and layer2 then 17 -> 9), as in AdaptSegNet."""
  net = ResNet(18, output_stride=8, caffe_style=True)
  out = jax.eval_shape(lambda v, x: net.apply(v, x, train=False),
                       models.init_shapes(net, (1, 64, 64, 3), train=False), jnp.zeros((1, 64, 64, 3)))
  assert out['layer1'].shape == (1, 17, 17, 64) and out['layer4'].shape == (1, 9, 9, 512)


# torch.nn.functional.max_pool2d(x, 3, 2, 1, ceil_mode=...) of the same all-negative 4x4 input.
@pytest.mark.parametrize('ceil_mode, expected', [
    (False, [[-1, -2], [-5, -6]]),
    (True, [[-1, -2, -4], [-5, -6, -8], [-13, -14, -16]])])
def test_max_pool_matches_pytorch_padding_and_ceil_mode(ceil_mode, expected):
  from rtda_jax.models.resnet import max_pool_3x3_s2
  x = -1.0 - jnp.arange(16.0).reshape(1, 4, 4, 1)  # all negative: zero padding would show up as 0
  np.testing.assert_array_equal(np.asarray(max_pool_3x3_s2(x, ceil_mode=ceil_mode))[0, ..., 0], expected)


# ---- segmentation models: shapes and dtypes ---------------------------------------------------------------------

@pytest.mark.parametrize('name, multi_level', [('bisenet', False), ('deeplabv2', False), ('deeplabv2', True)])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('train', [True, False])
def test_model_output_shapes_and_dtypes(name, multi_level, dtype, train):
  model = models.get_model(model_config(name, dtype, multi_level))
  x = jnp.zeros((2, 64, 128, 3))
  shapes = models.init_shapes(model, x.shape, train=False)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes['params']))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=train, mutable=['batch_stats'])[0], shapes, x)
  assert out['logits'].shape == (2, 64, 128, NUM_CLASSES) and out['logits'].dtype == jnp.float32
  expected_aux = (2 if train else 0) if name == 'bisenet' else (1 if multi_level else 0)
  assert len(out['aux']) == expected_aux
  for aux in out['aux']:
    assert aux.shape == (2, 64, 128, NUM_CLASSES) and aux.dtype == jnp.float32
  expected_features = (2, 2, 4, 512) if name == 'bisenet' else (2, 9, 17, 2048)
  assert out['features'].shape == expected_features and out['features'].dtype == jnp.float32


def test_model_parameter_counts():
  counts = models.parameter_counts(NUM_CLASSES)
  aspp = lambda c: 4 * (3 * 3 * c * NUM_CLASSES + NUM_CLASSES)
  assert counts['deeplabv2'] == 42_500_160 + aspp(2048)
  assert counts['deeplabv2_multi_level'] == 42_500_160 + aspp(2048) + aspp(1024)
  conv = lambda k, i, o: k * k * i * o + o
  bn = lambda c: 2 * c
  spatial = conv(3, 3, 64) + bn(64) + conv(3, 64, 128) + bn(128) + conv(3, 128, 256) + bn(256)
  arms = conv(1, 256, 256) + conv(1, 512, 512)
  ffm = conv(3, 1024, NUM_CLASSES) + bn(NUM_CLASSES) + 2 * conv(1, NUM_CLASSES, NUM_CLASSES)
  heads = conv(1, NUM_CLASSES, NUM_CLASSES) + conv(1, 256, NUM_CLASSES) + conv(1, 512, NUM_CLASSES)
  assert counts['bisenet'] == 11_176_512 + spatial + arms + ffm + heads


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_bisenet_runs_and_updates_batch_stats_only_in_train(dtype):
  model = models.get_model(model_config('bisenet', dtype))
  variables = fake_variables(model, (2, 64, 128, 3), train=False)
  x = images((2, 64, 128, 3))
  out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)
  assert len(out['aux']) == 2 and np.isfinite(np.asarray(out['logits'])).all()
  changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), variables['batch_stats'],
                                   updates['batch_stats'])
  assert all(jax.tree_util.tree_leaves(changed))
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert out['aux'] == () and out['logits'].dtype == jnp.float32
  assert np.isfinite(np.asarray(out['logits'])).all()


def test_bisenet_rejects_sizes_not_multiple_of_32():
  model = models.get_model(model_config('bisenet'))
  with pytest.raises(ValueError, match='multiples of 32'):
    models.init_shapes(model, (1, 48, 64, 3), train=False)


@pytest.fixture(scope='module', params=['float32', 'bfloat16'])
def deeplab_multi_level(request):
  """(model, variables) of a multi-level DeepLab-v2 at [1, 64, 64, 3], built once per dtype."""
  model = models.get_model(model_config('deeplabv2', request.param, multi_level=True))
  return model, fake_variables(model, (1, 64, 64, 3), train=False)


def test_deeplab_frozen_bn_keeps_batch_stats_and_train_equals_eval(deeplab_multi_level):
  model, variables = deeplab_multi_level
  x = images((1, 64, 64, 3))
  train_out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)
  same = jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b), variables['batch_stats'],
                                updates['batch_stats'])
  assert all(jax.tree_util.tree_leaves(same))
  eval_out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert train_out['logits'].shape == (1, 64, 64, NUM_CLASSES) and len(eval_out['aux']) == 1
  np.testing.assert_array_equal(np.asarray(train_out['logits']), np.asarray(eval_out['logits']))
  assert np.isfinite(np.asarray(eval_out['aux'][0])).all()


def test_deeplab_normalises_caffe_style():
  from rtda_jax.models.deeplabv2 import caffe_normalize
  x = jnp.asarray([[[[10.0, 20.0, 30.0]]]])  # RGB
  np.testing.assert_allclose(np.asarray(caffe_normalize(x))[0, 0, 0],
                             [30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434], rtol=1e-6)


# ---- parameter labels -------------------------------------------------------------------------------------------

def test_param_labels_bisenet_backbone_is_the_context_path():
  config = model_config('bisenet')
  params = models.init_shapes(models.get_model(config), (1, 64, 64, 3), train=False)['params']
  labels = models.param_labels(config, params)
  assert jax.tree_util.tree_structure(labels) == jax.tree_util.tree_structure(params)
  assert set(jax.tree_util.tree_leaves(labels['context_path'])) == {'backbone'}
  others = [l for k, v in labels.items() if k != 'context_path' for l in jax.tree_util.tree_leaves(v)]
  assert set(others) == {'head'}


def test_param_labels_deeplab_freezes_bn_and_marks_classifiers_as_head():
  config = model_config('deeplabv2', multi_level=True)
  params = models.init_shapes(models.get_model(config), (1, 64, 64, 3), train=False)['params']
  labels = models.param_labels(config, params)
  assert jax.tree_util.tree_structure(labels) == jax.tree_util.tree_structure(params)
  assert labels['backbone']['bn1'] == {'scale': 'frozen', 'bias': 'frozen'}
  assert labels['backbone']['layer3']['5']['conv2']['kernel'] == 'backbone'
  assert labels['backbone']['layer1']['0']['downsample'] == {'0': {'kernel': 'backbone'},
                                                             '1': {'scale': 'frozen', 'bias': 'frozen'}}
  for head in ('classifier', 'classifier_aux'):
    assert set(jax.tree_util.tree_leaves(labels[head])) == {'head'}
  flat = jax.tree_util.tree_leaves(labels)
  assert flat.count('frozen') == 2 * sum(1 for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                                         if p[-1].key == 'scale')


# ---- registry ---------------------------------------------------------------------------------------------------

def test_unknown_names_raise_with_choices():
  with pytest.raises(ValueError, match='bisenet'):
    models.get_model(model_config('unet'))
  with pytest.raises(ValueError, match='light'):
    models.get_discriminator('patchgan', NUM_CLASSES)


def test_register_model_adds_a_name(monkeypatch):
  monkeypatch.setitem(models.MODELS, 'tiny', models.ModelSpec(
      build=lambda c: ResNet(18), param_labels=lambda p: p, backbone_path=()))
  assert isinstance(models.get_model(model_config('tiny')), ResNet)


# ---- discriminators ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['fc', 'light'])
@pytest.mark.parametrize('channels', [NUM_CLASSES, 512])
def test_discriminator_output_is_one_32nd_of_the_input(name, channels):
  disc = models.get_discriminator(name, channels, 'float32')
  out = jax.eval_shape(lambda v, x: disc.apply(v, x), models.init_shapes(disc, (2, 64, 128, channels)),
                       jnp.zeros((2, 64, 128, channels)))
  assert out.shape == (2, 2, 4, 1) and out.dtype == jnp.float32


def test_discriminator_parameter_counts():
  conv = lambda k, i, o: k * k * i * o + o
  chans = (NUM_CLASSES, 64, 128, 256, 512, 1)
  fc = sum(conv(4, i, o) for i, o in zip(chans, chans[1:]))
  light = sum(16 * i + i + conv(1, i, o) for i, o in zip(chans, chans[1:]))  # depthwise 4x4 + pointwise 1x1
  assert fc == 2_781_121  # AdaptSegNet's FCDiscriminator for 19 classes
  for name, expected in (('fc', fc), ('light', light)):
    disc = models.get_discriminator(name, NUM_CLASSES)
    assert models.count_params(models.init_shapes(disc, (1, 64, 64, NUM_CLASSES))['params']) == expected


@pytest.mark.parametrize('name', ['fc', 'light'])
def test_discriminator_runs_from_its_own_init_in_both_dtypes(name):
  x = jax.nn.softmax(jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, NUM_CLASSES)), jnp.float32))
  variables = models.get_discriminator(name, NUM_CLASSES, 'bfloat16').init(jax.random.PRNGKey(0), x)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(variables))
  for dtype in ('float32', 'bfloat16'):
    out = jax.jit(models.get_discriminator(name, NUM_CLASSES, dtype).apply)(variables, x)
    assert out.shape == (2, 2, 2, 1) and out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize('name', ['fc', 'light'])
def test_feature_discriminator_keeps_the_resolution_of_small_inputs(name):
  # BiSeNet's layer4 features of a 128x256 image are 4x8: five halvings would leave nothing.
  disc = models.get_discriminator(name, 512, 'float32', downsample=False)
  variables = models.init_shapes(disc, (2, 4, 8, 512))
  out = jax.eval_shape(disc.apply, variables, jnp.zeros((2, 4, 8, 512)))
  assert out.shape == (2, 4, 8, 1)
  chans = (512, 64, 128, 256, 512, 1)
  expected = (sum(9 * i * o + o for i, o in zip(chans, chans[1:])) if name == 'fc'
              else sum(9 * i + i + i * o + o for i, o in zip(chans, chans[1:])))  # depthwise 3x3 + pointwise
  assert models.count_params(variables['params']) == expected


def test_discriminator_rejects_an_input_too_small_for_five_halvings():
  disc = models.get_discriminator('fc', 512)
  with pytest.raises(ValueError, match=r'\(16, 32\) is too small'):
    models.init_shapes(disc, (1, 16, 32, 512))  # 16 -> 8 -> 4 -> 2 -> 1 -> 0


def test_discriminator_rejects_wrong_channel_count():
  disc = models.get_discriminator('fc', NUM_CLASSES)
  with pytest.raises(ValueError, match='19 input channels'):
    models.init_shapes(disc, (1, 64, 64, 7))
