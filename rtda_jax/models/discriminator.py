"""Domain discriminators: AdaptSegNet's fully convolutional one ('fc') and a depthwise-separable one ('light').

Both: [B, H, W, C] (softmax of segmentation logits, or features) -> logits [B, H/32, W/32, 1] float32.
Five 4x4 stride-2 convs with explicit padding 1, channels C -> 64 -> 128 -> 256 -> 512 -> 1, LeakyReLU(0.2)
after the first four, no normalisation.

`downsample=False` makes every conv 3x3 stride 1 (padding 1): one domain logit per input location. That is the
form for feature-level adaptation, where the input is already small (BiSeNet's layer4 is 1/32 of the image, so
five more halvings leave nothing: a 512x1024 crop gives 16x32 features, and 16 -> 8 -> 4 -> 2 -> 1 -> 0).
A discriminator whose output would be empty raises a ValueError naming the input shape.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

CHANNELS = (64, 128, 256, 512, 1)


def _conv(features: int, downsample: bool, dtype: Any, name: str, groups: int = 1) -> nn.Conv:
  """4x4 stride 2 padding 1 (AdaptSegNet), or 3x3 stride 1 padding 1 (size-preserving)."""
  kernel, stride = (4, 2) if downsample else (3, 1)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((1, 1), (1, 1)),
                 feature_group_count=groups, dtype=dtype, param_dtype=jnp.float32, name=name)


def output_size(size: int, downsample: bool) -> int:
  """Spatial size after the five convs (floor((n + 2 - 4) / 2) + 1 per stride-2 conv)."""
  for _ in CHANNELS:
    size = (size - 2) // 2 + 1 if downsample else size
  return size


class DepthwiseSeparableConv(nn.Module):
  """Depthwise 4x4 stride-2 (or 3x3 stride-1) conv ('depthwise') + pointwise 1x1 conv ('pointwise'), with bias."""
  features: int
  downsample: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    x = _conv(channels, self.downsample, self.dtype, 'depthwise', groups=channels)(x)
    return nn.Conv(self.features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name='pointwise')(x)


class FCDiscriminator(nn.Module):
  """AdaptSegNet's discriminator (convs 'conv1'..'conv4', 'classifier'), or its light variant."""
  in_channels: int
  light: bool = False
  downsample: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if x.shape[-1] != self.in_channels:
      raise ValueError(f'Discriminator built for {self.in_channels} input channels got {x.shape[-1]}.')
    if min(output_size(n, self.downsample) for n in x.shape[1:3]) < 1:
      raise ValueError(f'Discriminator input of spatial size {tuple(x.shape[1:3])} is too small for five stride-2 '
                       'convs (the output would be empty); give it at least 32x32 or build it with '
                       'downsample=False (as feature-level adaptation does).')
    x = x.astype(self.dtype)
    names = ('conv1', 'conv2', 'conv3', 'conv4', 'classifier')
    for i, (features, name) in enumerate(zip(CHANNELS, names)):
      if self.light:
        x = DepthwiseSeparableConv(features, self.downsample, self.dtype, name=name)(x)
      else:
        x = _conv(features, self.downsample, self.dtype, name)(x)
      if i < len(CHANNELS) - 1:
        x = nn.leaky_relu(x, negative_slope=0.2)
    return x.astype(jnp.float32)  # [B, H/32, W/32, 1] (downsample) or [B, H, W, 1]


DISCRIMINATORS: dict[str, Callable[[int, bool, Any], nn.Module]] = {
    'fc': lambda channels, downsample, dtype: FCDiscriminator(channels, False, downsample, dtype),
    'light': lambda channels, downsample, dtype: FCDiscriminator(channels, True, downsample, dtype),
}
