"""Pretrained weights: torchvision-named state dicts -> Flax variables, file formats, errors, PyTorch parity."""

from __future__ import annotations

import sys

import jax
import ml_collections
import numpy as np
import pytest

from rtda_jax import models
from rtda_jax.models import pretrained
from rtda_jax.models.resnet import ResNet
from tests.script_utils import load_benchmark_script


def torchvision_resnet_state_dict(depth: int, seed: int = 0, prefix: str = '', fc: bool = True
                                  ) -> dict[str, np.ndarray]:
  """A torchvision-style ResNet state dict built by hand (key names and OIHW shapes), random numpy values."""
  rng = np.random.default_rng(seed)
  sd: dict[str, np.ndarray] = {}

  def conv(name, o, i, k):
    sd[prefix + name + '.weight'] = rng.normal(0, np.sqrt(1.0 / (i * k * k)), (o, i, k, k)).astype(np.float32)

  def bn(name, c):
    sd[prefix + name + '.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[prefix + name + '.bias'] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[prefix + name + '.running_mean'] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[prefix + name + '.running_var'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[prefix + name + '.num_batches_tracked'] = np.array(7, np.int64)

  bottleneck = depth >= 50
  blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  expansion = 4 if bottleneck else 1
  conv('conv1', 64, 3, 7)
  bn('bn1', 64)
  inplanes = 64
  for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
    for b in range(n):
      name = f'layer{stage}.{b}'
      if bottleneck:
        conv(f'{name}.conv1', planes, inplanes, 1)
        conv(f'{name}.conv2', planes, planes, 3)
        conv(f'{name}.conv3', planes * 4, planes, 1)
        for i, c in ((1, planes), (2, planes), (3, planes * 4)):
          bn(f'{name}.bn{i}', c)
      else:
        conv(f'{name}.conv1', planes, inplanes, 3)
        conv(f'{name}.conv2', planes, planes, 3)
        bn(f'{name}.bn1', planes)
        bn(f'{name}.bn2', planes)
      if b == 0 and (stage > 1 or inplanes != planes * expansion):
        conv(f'{name}.downsample.0', planes * expansion, inplanes, 1)
        bn(f'{name}.downsample.1', planes * expansion)
      inplanes = planes * expansion
  if fc:
    sd[prefix + 'fc.weight'] = rng.normal(0, 0.01, (1000, inplanes)).astype(np.float32)
    sd[prefix + 'fc.bias'] = np.zeros(1000, np.float32)
  return sd


def model_config(name: str, path: str | None, multi_level: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name=name, num_classes=19, dtype='float32', pretrained=path,
                                        multi_level=multi_level))


def zero_variables(name: str, multi_level: bool = False):
  """Variables of the named model at [1, 64, 64, 3], all zeros (no RNG compile)."""
  model = models.get_model(model_config(name, None, multi_level))
  shapes = models.init_shapes(model, (1, 64, 64, 3), train=False)
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def assert_backbone_equals(state_dict, params, batch_stats, prefix=''):
  """Every conv / BN of the state dict sits at the same path in the Flax tree, OIHW -> HWIO."""
  for key, value in state_dict.items():
    key = key[len(prefix):]
    if key.startswith(('fc.', 'layer5.')) or key.endswith('num_batches_tracked'):
      continue
    *path, leaf = key.split('.')
    tree = batch_stats if leaf.startswith('running') else params
    for p in path:
      tree = tree[p]
    if leaf == 'weight' and value.ndim == 4:
      np.testing.assert_array_equal(np.asarray(tree['kernel']), value.transpose(2, 3, 1, 0))
    else:
      flax_leaf = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean', 'running_var': 'var'}[leaf]
      np.testing.assert_array_equal(np.asarray(tree[flax_leaf]), value)


@pytest.mark.parametrize('suffix', ['.npz', '.safetensors'])
def test_round_trip_through_file_into_bisenet_backbone(tmp_path, suffix):
  sd = torchvision_resnet_state_dict(18)
  path = str(tmp_path / f'resnet18{suffix}')
  pretrained.write_state_dict(sd, path)
  variables = zero_variables('bisenet')
  loaded = pretrained.load_pretrained(model_config('bisenet', path), variables)
  assert_backbone_equals(sd, loaded['params']['context_path'], loaded['batch_stats']['context_path'])
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
  for head in ('spatial_path', 'feature_fusion_module', 'conv'):  # heads untouched
    assert all(not np.any(l) for l in jax.tree_util.tree_leaves(loaded['params'][head]))


def test_flax_to_torch_inverts_torch_to_flax():
  sd = {k: v for k, v in torchvision_resnet_state_dict(18, fc=False).items() if 'num_batches' not in k}
  back = pretrained.flax_to_torch(pretrained.torch_to_flax(sd))
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])


def test_no_pretrained_keeps_variables():
  variables = {'params': {'a': np.ones(2)}}
  assert pretrained.load_pretrained(model_config('bisenet', None), variables) is variables


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
  sd = torchvision_resnet_state_dict(18)
  del sd['layer1.0.conv1.weight']
  sd['layer9.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  sd['layer2.0.bn1.running_var'] = np.ones(3, np.float32)
  path = str(tmp_path / 'broken.npz')
  pretrained.write_state_dict(sd, path)
  with pytest.raises(ValueError) as err:
    pretrained.load_pretrained(model_config('bisenet', path), zero_variables('bisenet'))
  message = str(err.value)
  assert 'layer1.0.conv1.weight' in message and 'missing' in message
  assert 'layer9.0.conv1.weight' in message and 'unexpected' in message
  assert 'layer2.0.bn1.running_var: file (3,) vs model (128,)' in message
  assert 'nothing was loaded' in message


def test_wrong_depth_is_an_error_not_a_partial_load(tmp_path):
  path = str(tmp_path / 'resnet50.npz')
  pretrained.write_state_dict(torchvision_resnet_state_dict(50), path)
  with pytest.raises(ValueError, match='layer1.0.conv3.weight'):
    pretrained.load_pretrained(model_config('bisenet', path), zero_variables('bisenet'))


def test_missing_file_names_it():
  with pytest.raises(FileNotFoundError, match='nowhere.npz'):
    pretrained.load_pretrained(model_config('bisenet', '/nowhere.npz'), zero_variables('bisenet'))


def test_deeplab_init_file_keys_load_and_its_classifier_is_skipped(tmp_path):
  """The DeepLab-v2 init file: 'Scale.'-prefixed ResNet-101 keys plus a 21-class 'Scale.layer5' classifier."""
  sd = torchvision_resnet_state_dict(101, prefix='Scale.', fc=False)
  for i in range(4):
    sd[f'Scale.layer5.conv2d_list.{i}.weight'] = np.ones((21, 2048, 3, 3), np.float32)
    sd[f'Scale.layer5.conv2d_list.{i}.bias'] = np.ones(21, np.float32)
  path = str(tmp_path / 'deeplab_init.safetensors')
  pretrained.write_state_dict(sd, path)
  variables = zero_variables('deeplabv2', multi_level=True)
  loaded = pretrained.load_pretrained(model_config('deeplabv2', path, multi_level=True), variables)
  assert_backbone_equals(sd, loaded['params']['backbone'], loaded['batch_stats']['backbone'], prefix='Scale.')
  for head in ('classifier', 'classifier_aux'):
    assert all(not np.any(l) for l in jax.tree_util.tree_leaves(loaded['params'][head]))


def test_pth_without_torch_says_how_to_convert(tmp_path, monkeypatch):
  path = tmp_path / 'weights.pth'
  path.write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match='rtda_jax.models.pretrained convert'):
    pretrained.read_state_dict(str(path))


# ---- with PyTorch -----------------------------------------------------------------------------------------------

def test_convert_command_pth_to_npz(tmp_path):
  torch = pytest.importorskip('torch')
  sd = torchvision_resnet_state_dict(18)
  src, dst = str(tmp_path / 'resnet18.pth'), str(tmp_path / 'resnet18.npz')
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, src)
  assert pretrained.main(['convert', src, dst]) == 0
  converted = pretrained.read_state_dict(dst)
  assert sorted(converted) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(converted[k], sd[k])
  loaded = pretrained.load_pretrained(model_config('bisenet', src), zero_variables('bisenet'))  # .pth directly
  assert_backbone_equals(sd, loaded['params']['context_path'], loaded['batch_stats']['context_path'])


def _torch_resnet(depth: int, caffe_style: bool):
  """A minimal torchvision-compatible ResNet (18: basic blocks; 50: bottlenecks). caffe_style: AdaptSegNet's
  DeepLab-v2 variant (stride on the first 1x1, ceil-mode pool, layer3/4 dilated 2/4 in every block)."""
  import torch
  from torch import nn

  class Block(nn.Module):
    def __init__(self, inplanes, planes, stride, dilation, bottleneck):
      super().__init__()
      self.bottleneck = bottleneck
      expansion = 4 if bottleneck else 1
      if bottleneck:
        s1, s2 = (stride, 1) if caffe_style else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, s2, dilation, dilation, bias=False)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
      else:
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn1, self.bn2 = nn.BatchNorm2d(planes), nn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or inplanes != planes * expansion:
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * expansion, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes * expansion))

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      if self.bottleneck:
        out = self.bn3(self.conv3(torch.relu(out)))
      return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      bottleneck = depth >= 50
      blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=caffe_style)
      inplanes = 64
      for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        stride = 2 if stage == 2 or (stage > 2 and not caffe_style) else 1
        dilation = {3: 2, 4: 4}.get(stage, 1) if caffe_style else 1
        layer = []
        for b in range(n):
          layer.append(Block(inplanes, planes, stride if b == 0 else 1, dilation, bottleneck))
          inplanes = planes * (4 if bottleneck else 1)
        setattr(self, f'layer{stage}', nn.Sequential(*layer))
      self.fc = nn.Linear(inplanes, 1000)

    def forward(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      feats = {}
      for stage in range(1, 5):
        x = getattr(self, f'layer{stage}')(x)
        feats[f'layer{stage}'] = x
      feats['logits'] = self.fc(x.mean(dim=(2, 3)))
      return feats

  return Net()


@pytest.mark.parametrize('depth, caffe_style, size', [(18, False, (64, 64)), (50, True, (64, 80))])
def test_flax_resnet_matches_pytorch(depth, caffe_style, size):
  """Same weights, same input: Flax features and ImageNet logits equal a PyTorch twin's within 1e-4."""
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  net = _torch_resnet(depth, caffe_style)
  sd = torchvision_resnet_state_dict(depth, seed=1)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)

  flax_net = ResNet(depth, output_stride=8 if caffe_style else 32, caffe_style=caffe_style)
  shapes = models.init_shapes(flax_net, x.shape, train=False)
  variables = pretrained.load_backbone(sd, jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  # Running statistics, then batch statistics (ResNet-18 only: with few pixels per channel, batch-statistics BN
  # amplifies float32 rounding through ResNet-50 to ~1e-3; eval mode checks the caffe-style structure).
  for train in (False, True) if depth == 18 else (False,):
    net.train(train)
    with torch.no_grad():
      ref = {k: v.numpy() for k, v in net(torch.from_numpy(x.transpose(0, 3, 1, 2))).items()}
    out, updates = jax.jit(lambda v, x: flax_net.apply(v, x, train=train, mutable=['batch_stats']))(variables, x)
    for k, v in out.items():
      np.testing.assert_allclose(np.asarray(v), ref[k].transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4, err_msg=k)
    logits = np.asarray(out['layer4']).mean(axis=(1, 2)) @ sd['fc.weight'].T + sd['fc.bias']
    np.testing.assert_allclose(logits, ref['logits'], atol=1e-4, rtol=1e-4)
    # The running statistics after the pass (training: PyTorch's update, unbiased variance; eval: untouched). They
    # average the features (and their squares), so they carry the features' 1e-4 agreement (2e-4 for squares).
    ours = pretrained.flax_to_torch({'batch_stats': jax.tree_util.tree_map(np.asarray, updates['batch_stats'])})
    theirs = {k: v.numpy() for k, v in net.state_dict().items() if k.endswith(('running_mean', 'running_var'))}
    assert sorted(ours) == sorted(theirs) == sorted(k for k in sd if k.endswith(('running_mean', 'running_var')))
    moved = 0
    for k, v in theirs.items():
      np.testing.assert_allclose(ours[k], v, atol=2e-4, rtol=2e-4, err_msg=k)
      moved += not np.array_equal(v, sd[k])
    assert moved == (len(theirs) if train else 0)


# ---- the PyTorch twin (benchmarks/pytorch_twin.py) in training ----------------------------------------------------

def _twin_module():
  return load_benchmark_script('pytorch_twin')


@pytest.mark.parametrize('name, bn_mode, align_corners, resolution', [
    ('bisenet', None, False, (64, 96)),  # 'train'
    ('bisenet', 'frozen', True, (64, 96)),
    ('deeplabv2', None, True, (48, 64)),  # 'batch': as AdaptSegNet / FDA / DACS train it
])
def test_pytorch_twin_training_forward_and_running_statistics(name, bn_mode, align_corners, resolution):
  """A training forward pass in the model's BN mode: logits and every updated running statistic against the
  PyTorch twin in float64. Yardstick: the twin's own float32 error (batch-statistics BN with few values per channel
  amplifies float32 rounding, up to ~1e-3 through ResNet-101); ours may not be more than 3x worse, plus 8 ulps."""
  pytest.importorskip('torch')
  check = _twin_module().train_parity(name, bn_mode, align_corners, resolution, batch=2, float64_reference=True)
  err = check['float64']
  u = 2.0 ** -24
  assert err['ours_logit_error'] <= 3 * err['twin_logit_error'] + 8 * u * check['max_abs_logit'], err
  assert err['ours_stat_error'] <= 3 * err['twin_stat_error'] + 8 * u * check['max_abs_stat'], err
  assert check['moved'] == check['twin_moved'] and check['moved']
  backbone = {'bisenet': 'context_path.', 'deeplabv2': 'backbone.'}[name]
  if bn_mode == 'frozen':  # the backbone keeps its statistics; BiSeNet's spatial path and fusion module do not
    assert not any(k.startswith(backbone) for k in check['moved'])
  else:
    assert any(k.startswith(backbone) for k in check['moved'])
