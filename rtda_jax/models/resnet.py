"""ResNet-18/34/50/101/152 backbones in Flax, named like torchvision so ImageNet weights map one to one.

Parameter paths mirror torchvision's state-dict keys: `layer1.0.conv1.weight` is
`params['layer1']['0']['conv1']['kernel']` and `layer1.0.downsample.1.running_mean` is
`batch_stats['layer1']['0']['downsample']['1']['mean']` (see `pretrained.py`).

Two flavours of the same network:
- torchvision (default): stride on the 3x3 conv of a bottleneck ("ResNet v1.5"), floor-mode max pool, and with
  `output_stride` < 32 the `replace_stride_with_dilation` rule: the first block of a dilated stage keeps the
  previous dilation, the others use the new one.
- caffe (`caffe_style=True`, DeepLab-v2 as in AdaptSegNet / FDA / DACS and their init file): stride on the first
  1x1 conv of a bottleneck, ceil-mode max pool, and every block of a dilated stage uses the stage's dilation.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from rtda_jax.models.norm import BatchNorm, uses_running_average

# torchvision initialises convolutions with kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# depth -> (block type name, blocks per stage)
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1, *,
         dtype: Any = jnp.float32, name: str | None = None, use_bias: bool = False,
         kernel_init: Callable = conv_kernel_init) -> nn.Conv:
  """A PyTorch-style Conv2d: explicit symmetric padding, float32 parameters, computation in `dtype`."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                 kernel_dilation=(dilation, dilation), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


def batch_norm(train: bool, bn_mode: str, dtype: Any,
               name: str | None = None) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """PyTorch BatchNorm2d (`norm.BatchNorm`) called with the running averages in eval, and in training in 'frozen'
  mode (see `norm.BN_MODES`): x [B, H, W, C] -> [B, H, W, C] in `dtype`."""
  return functools.partial(BatchNorm(dtype=dtype, name=name),
                           use_running_average=uses_running_average(train, bn_mode))


def max_pool_3x3_s2(x: jnp.ndarray, ceil_mode: bool = False) -> jnp.ndarray:
  """PyTorch MaxPool2d(3, stride=2, padding=1[, ceil_mode]); padding is -inf, never 'SAME'. x: [B, H, W, C]."""
  pads = []
  for size in x.shape[1:3]:
    if not ceil_mode:
      pads.append((1, 1))
      continue
    out = -(-(size + 2 - 3) // 2) + 1  # ceil((size + 2p - k) / s) + 1
    if (out - 1) * 2 >= size + 1:  # PyTorch drops a last window that starts in the right padding
      out -= 1
    pads.append((1, (out - 1) * 2 + 3 - size - 1))
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=tuple(pads))


class Downsample(nn.Module):
  """The shortcut projection: 1x1 conv ('0') + BN ('1'), as torchvision's `downsample` Sequential."""
  features: int
  stride: int
  bn_mode: str = 'train'  # norm.BN_MODES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = conv(self.features, 1, self.stride, dtype=self.dtype, name='0')(x)
    return batch_norm(train, self.bn_mode, self.dtype, name='1')(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  caffe_style: bool = False  # no effect on basic blocks; kept for a uniform block interface
  bn_mode: str = 'train'  # norm.BN_MODES
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    bn = functools.partial(batch_norm, train, self.bn_mode, self.dtype)
    d = self.dilation
    out = conv(self.planes, 3, self.stride, d, d, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(bn(name='bn1')(out))
    out = conv(self.planes, 3, 1, d, d, dtype=self.dtype, name='conv2')(out)
    out = bn(name='bn2')(out)
    if self.downsample:
      x = Downsample(self.planes, self.stride, self.bn_mode, self.dtype, name='downsample')(x, train)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 channels). Stride on the 3x3 (torchvision) or on the first 1x1 (caffe)."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  caffe_style: bool = False
  bn_mode: str = 'train'  # norm.BN_MODES
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    bn = functools.partial(batch_norm, train, self.bn_mode, self.dtype)
    s1, s2 = (self.stride, 1) if self.caffe_style else (1, self.stride)
    d = self.dilation
    out = conv(self.planes, 1, s1, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(bn(name='bn1')(out))
    out = conv(self.planes, 3, s2, d, d, dtype=self.dtype, name='conv2')(out)
    out = nn.relu(bn(name='bn2')(out))
    out = conv(self.planes * 4, 1, dtype=self.dtype, name='conv3')(out)
    out = bn(name='bn3')(out)
    if self.downsample:
      x = Downsample(self.planes * 4, self.stride, self.bn_mode, self.dtype, name='downsample')(x, train)
    return nn.relu(out + x)


class ResLayer(nn.Module):
  """One stage (torchvision's `layerN` Sequential); blocks are named '0', '1', ..."""
  block: str
  planes: int
  num_blocks: int
  stride: int
  first_dilation: int
  dilation: int
  caffe_style: bool = False
  bn_mode: str = 'train'  # norm.BN_MODES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    block_cls = BasicBlock if self.block == 'basic' else Bottleneck
    out_channels = self.planes * block_cls.expansion
    for i in range(self.num_blocks):
      first = i == 0
      x = block_cls(
          planes=self.planes,
          stride=self.stride if first else 1,
          dilation=self.first_dilation if first else self.dilation,
          downsample=first and (self.stride != 1 or x.shape[-1] != out_channels),
          caffe_style=self.caffe_style, bn_mode=self.bn_mode, dtype=self.dtype, name=str(i))(x, train)
    return x


class ResNet(nn.Module):
  """ResNet feature extractor without the fc classifier.

  Input: normalised images [B, H, W, 3] (the caller normalises). Output: dict 'layer1'..'layer4' of features
  [B, H/4, W/4, 64e], [B, H/8, W/8, 128e], [B, H/16, W/16, 256e], [B, H/32, W/32, 512e] (e = 1 basic, 4 bottleneck)
  at output_stride 32; with output_stride 8 layer3 and layer4 stay at 1/8 (dilations 2 and 4).
  `bn_mode` ('train', 'batch' or 'frozen', see `norm.BN_MODES`) decides which statistics every BatchNorm uses in
  training ('frozen': the running ones); freezing the affine is the optimiser's job (the models' `param_labels`).
  """
  depth: int = 18
  output_stride: int = 32  # 32, 16 or 8
  caffe_style: bool = False
  bn_mode: str = 'train'  # norm.BN_MODES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> dict[str, jnp.ndarray]:
    if self.depth not in RESNET_DEPTHS:
      raise ValueError(f'Unsupported ResNet depth {self.depth}; choose one of {sorted(RESNET_DEPTHS)}.')
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f'output_stride must be 8, 16 or 32, got {self.output_stride}.')
    block, num_blocks = RESNET_DEPTHS[self.depth]
    x = x.astype(self.dtype)
    x = conv(64, 7, 2, 3, dtype=self.dtype, name='conv1')(x)  # [B, H/2, W/2, 64]
    x = nn.relu(batch_norm(train, self.bn_mode, self.dtype, name='bn1')(x))
    x = max_pool_3x3_s2(x, ceil_mode=self.caffe_style)  # [B, H/4, W/4, 64]

    features = {}
    dilation = 1
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
      stride = 1 if stage == 1 else 2
      previous_dilation = dilation
      if stride == 2 and 2 ** (stage + 1) > self.output_stride:  # replace the stride by a dilation
        dilation *= 2
        stride = 1
      first_dilation = dilation if self.caffe_style else previous_dilation
      x = ResLayer(block, planes, blocks, stride, first_dilation, dilation, self.caffe_style, self.bn_mode,
                   self.dtype, name=f'layer{stage}')(x, train)
      features[f'layer{stage}'] = x
    return features
