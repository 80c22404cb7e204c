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


def model_config(name: str, dtype: str = 'float32', multi_level: bool = False, bn_mode: str | None = None,
                 align_corners: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name=name, num_classes=NUM_CLASSES, dtype=dtype, pretrained=None,
                                        multi_level=multi_level, bn_mode=bn_mode, align_corners=align_corners))


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
  """(model, variables) of a multi-level DeepLab-v2 in 'frozen' BN mode at [1, 64, 64, 3], built once per dtype."""
  model = models.get_model(model_config('deeplabv2', request.param, multi_level=True, bn_mode='frozen'))
  return model, fake_variables(model, (1, 64, 64, 3), train=False)


def test_deeplab_frozen_mode_keeps_batch_stats_and_train_equals_eval(deeplab_multi_level):
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


# ---- BatchNorm modes ---------------------------------------------------------------------------------------

def test_bn_mode_defaults_and_config_override():
  assert models.bn_mode(model_config('bisenet')) == 'train' and models.bn_mode(model_config('deeplabv2')) == 'batch'
  for name in ('bisenet', 'deeplabv2'):
    assert models.get_model(model_config(name)).bn_mode == models.bn_mode(model_config(name))
    for mode in ('train', 'batch', 'frozen'):
      assert models.get_model(model_config(name, bn_mode=mode)).bn_mode == mode
      assert models.bn_mode(model_config(name, bn_mode=mode)) == mode
  config = ml_collections.ConfigDict(dict(name='deeplabv2', num_classes=NUM_CLASSES, dtype='float32'))
  assert models.get_model(config).bn_mode == 'batch'  # a config without the field: the model's default


@pytest.mark.parametrize('name', ['bisenet', 'deeplabv2'])
def test_unknown_bn_mode_names_the_field(name):
  with pytest.raises(ValueError, match=r"config.model.bn_mode='sync'"):
    models.get_model(model_config(name, bn_mode='sync'))
  with pytest.raises(ValueError, match=r"config.model.bn_mode='sync'"):
    models.param_labels(model_config(name, bn_mode='sync'), {})


def one_sgd_step(model, config, variables, x, labels):
  """One SGD step of CE through `segmentation_optimizer` and `models.param_labels(config, ...)`, as the methods do:
  the new TrainState on the host. No weight decay, so whatever moves is moved by its gradient."""
  from rtda_jax import losses
  from rtda_jax.methods import base, supervised
  train_cfg = ml_collections.ConfigDict(dict(optimizer='sgd', learning_rate=0.1, head_lr_mult=10.0, momentum=0.9,
                                             weight_decay=0.0, num_steps=10, poly_power=0.9, warmup_steps=0))
  tx = base.segmentation_optimizer(train_cfg, models.param_labels(config, variables['params']))
  state = base.create_train_state(model, variables, tx)

  def step(state):
    def loss_fn(params):
      outputs, batch_stats = supervised.apply_train(state, params, x)
      return losses.cross_entropy(outputs['logits'], labels), batch_stats
    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats)

  return jax.device_get(jax.jit(step)(state))


def leaves(tree):
  """{'a/b/c': leaf} of a pytree of dicts."""
  return {'/'.join(p.key for p in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('mode', ['train', 'batch', 'frozen'])
def test_deeplab_bn_modes_in_a_training_step(mode):
  """'train': BN scale/bias learn; 'batch' (the default): they never move but the running statistics do, and
  training normalises with the batch's statistics; 'frozen': neither moves, training normalises with the running
  statistics. DeepLab-v2 from the registry, shrunk to a ResNet-18 backbone (same code, same labels)."""
  config = model_config('deeplabv2', bn_mode=mode)
  model = models.get_model(config).clone(backbone_depth=18)
  x = images((2, 32, 32, 3))
  labels = jnp.asarray(np.random.default_rng(1).integers(0, NUM_CLASSES, (2, 32, 32)), jnp.int32)
  variables = fake_variables(model, x.shape, train=False)
  new = one_sgd_step(model, config, variables, x, labels)
  old_params, new_params = leaves(variables['params']), leaves(new.params)
  bn = [k for k in old_params if k.startswith('backbone/') and k.endswith(('/scale', '/bias'))]
  assert len(bn) == 2 * 20  # ResNet-18: stem + 16 block BNs + 3 downsample BNs
  moved = {k: not np.array_equal(old_params[k], new_params[k]) for k in old_params}
  assert all(moved[k] for k in old_params if k.endswith('/kernel'))
  assert all(moved[k] == (mode == 'train') for k in bn)
  old_stats, new_stats = leaves(variables['batch_stats']), leaves(new.batch_stats)
  assert sorted(old_stats) == sorted(new_stats) and len(old_stats) == len(bn)
  assert all(np.array_equal(old_stats[k], new_stats[k]) == (mode == 'frozen') for k in old_stats)
  train_logits = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[0]['logits'])(
      variables, x)
  eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False)['logits'])(variables, x)
  assert np.array_equal(np.asarray(train_logits), np.asarray(eval_logits)) == (mode == 'frozen')


def test_bisenet_frozen_mode_freezes_only_the_context_path_statistics():
  model = models.get_model(model_config('bisenet', bn_mode='frozen'))
  variables = fake_variables(model, (2, 64, 64, 3), train=False)
  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, images((2, 64, 64, 3)))
  old, new = leaves(variables['batch_stats']), leaves(updates['batch_stats'])
  for k in old:  # the ImageNet context path keeps its statistics; the from-scratch parts use ordinary BN
    assert np.array_equal(old[k], new[k]) == k.startswith('context_path/'), k


# ---- align_corners ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('align_corners', [True, False])
def test_deeplab_align_corners_upsampling_of_logits_and_aux(align_corners):
  """A 65x65 input gives 9x9 classifier maps; with align_corners every 8th output pixel (64 / 8) IS a classifier
  pixel, bit for bit (interpolation weight exactly 0 or 1); with half-pixel centres it is not."""
  config = model_config('deeplabv2', multi_level=True, align_corners=align_corners)
  model = models.get_model(config).clone(backbone_depth=18)
  assert model.align_corners is align_corners
  x = images((1, 65, 65, 3))
  variables = fake_variables(model, x.shape, train=False)
  out, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                                mutable=['intermediates']))(variables, x)
  for logits, head in ((out['logits'], 'classifier'), (out['aux'][0], 'classifier_aux')):
    low = np.asarray(inter['intermediates'][head]['__call__'][0])
    assert low.shape == (1, 9, 9, NUM_CLASSES)
    sampled = np.asarray(logits)[:, ::8, ::8]
    if align_corners:
      np.testing.assert_array_equal(sampled, low)
    else:
      assert np.abs(sampled - low).max() > 0.01 * np.abs(low).max()


@pytest.mark.parametrize('align_corners', [True, False])
def test_bisenet_align_corners_upsampling_to_the_input(align_corners):
  """BiSeNet upsamples the fused 1/8 map to the input, then a 1x1 conv: the conv commutes with bilinear weights
  (they sum to 1), so with align_corners every 9th pixel of a 64x64 output (63 / 7) is the conv of a fused pixel."""
  model = models.get_model(model_config('bisenet', align_corners=align_corners))
  assert model.align_corners is align_corners
  x = images((1, 64, 64, 3))
  variables = fake_variables(model, x.shape, train=False)
  out, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                                mutable=['intermediates']))(variables, x)
  fused = np.asarray(inter['intermediates']['feature_fusion_module']['__call__'][0], np.float64)  # [1, 8, 8, K]
  conv = variables['params']['conv']
  expected = fused @ np.asarray(conv['kernel'], np.float64)[0, 0] + np.asarray(conv['bias'], np.float64)
  sampled = np.asarray(out['logits'])[:, ::9, ::9]
  # float32 1x1 conv: K = 19 products summed, error <= 19 u sum|w f| (+ the bias addition's rounding).
  bound = (NUM_CLASSES + 1) * 2.0 ** -24 * (np.abs(fused) @ np.abs(np.asarray(conv['kernel'], np.float64)[0, 0])
                                           + np.abs(np.asarray(conv['bias'])))
  if align_corners:
    assert np.all(np.abs(sampled - expected) <= bound)
  else:
    assert np.abs(sampled - expected).max() > 1000 * bound.max()


# ---- parameter labels -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('mode', [None, 'train', 'batch', 'frozen'])
def test_param_labels_bisenet_backbone_is_the_context_path(mode):
  config = model_config('bisenet', bn_mode=mode)
  params = models.init_shapes(models.get_model(config), (1, 64, 64, 3), train=False)['params']
  labels = models.param_labels(config, params)
  assert jax.tree_util.tree_structure(labels) == jax.tree_util.tree_structure(params)
  bn_label = 'frozen' if mode in ('batch', 'frozen') else 'backbone'
  for path, label in leaves(labels['context_path']).items():
    assert label == ('backbone' if path.endswith('kernel') else bn_label), path
  assert labels['context_path']['layer1']['0']['bn1'] == {'scale': bn_label, 'bias': bn_label}
  others = [l for k, v in labels.items() if k != 'context_path' for l in jax.tree_util.tree_leaves(v)]
  assert set(others) == {'head'}  # the spatial path's and fusion module's BN learn in every mode


@pytest.mark.parametrize('mode', [None, 'train', 'batch', 'frozen'])
def test_param_labels_deeplab_bn_by_mode_and_classifiers_as_head(mode):
  config = model_config('deeplabv2', multi_level=True, bn_mode=mode)
  params = models.init_shapes(models.get_model(config), (1, 64, 64, 3), train=False)['params']
  labels = models.param_labels(config, params)
  bn_label = 'backbone' if mode == 'train' else 'frozen'  # None = 'batch', DeepLab-v2's default
  assert jax.tree_util.tree_structure(labels) == jax.tree_util.tree_structure(params)
  assert labels['backbone']['bn1'] == {'scale': bn_label, 'bias': bn_label}
  assert labels['backbone']['layer3']['5']['conv2']['kernel'] == 'backbone'
  assert labels['backbone']['layer1']['0']['downsample'] == {'0': {'kernel': 'backbone'},
                                                             '1': {'scale': bn_label, 'bias': bn_label}}
  for head in ('classifier', 'classifier_aux'):
    assert set(jax.tree_util.tree_leaves(labels[head])) == {'head'}
  flat = jax.tree_util.tree_leaves(labels)
  num_bn = sum(1 for p, _ in jax.tree_util.tree_flatten_with_path(params)[0] if p[-1].key == 'scale')
  assert flat.count('frozen') == (0 if mode == 'train' else 2 * num_bn)


# ---- registry ---------------------------------------------------------------------------------------------------

def test_unknown_names_raise_with_choices():
  with pytest.raises(ValueError, match='bisenet'):
    models.get_model(model_config('unet'))
  with pytest.raises(ValueError, match='light'):
    models.get_discriminator('patchgan', NUM_CLASSES)


def test_register_model_adds_a_name(monkeypatch):
  monkeypatch.setitem(models.MODELS, 'tiny', models.ModelSpec(
      build=lambda c: ResNet(18), param_labels=lambda p: jax.tree.map(lambda _: 'head', p), backbone_path=()))
  assert isinstance(models.get_model(model_config('tiny')), ResNet)
  # A model without BatchNorm modes: param_labels(params), and model.bn_mode must stay None.
  assert models.bn_mode(model_config('tiny')) is None
  assert models.param_labels(model_config('tiny'), {'w': 1}) == {'w': 'head'}
  with pytest.raises(ValueError, match="bn_mode='batch'.*'tiny' has no BatchNorm modes"):
    models.param_labels(model_config('tiny', bn_mode='batch'), {'w': 1})


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
